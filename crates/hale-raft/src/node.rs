//! One raft node: openraft wired to the SQLite log and state machine, the
//! raft RPC listener, write forwarding, read consistency and membership.

use crate::election::{
    decide_prevote, leader_line, membership_line, ElectionCounts, ElectionStats, Jitter, Leadership, Members, Patience,
    PreVoteReply, PreVoteRequest, VoterView,
};
use crate::forward::{check_forwarded, origin_of, ForwardRequest, UserCheck};
use crate::log_store::LogStore;
use crate::network::{
    Faults, LinkShape, NetClient, NetworkFactory, FROM_HEADER, RPC_BODY_BYTES_MAX, SECRET_HEADER, TO_HEADER,
};
use crate::peer_tls::{secret_eq, Peer, PeerTls, PeerTlsFiles};
use crate::state_machine::StateMachineStore;
use crate::types::{HaleNode, NodeId, Payload, Raft, RaftMetrics, TypeConfig};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::propose::{ProposeError, ProposeFuture, Proposer};
use hale_store::split::split_command;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod handover;
use handover::rpc_timeout_now;
pub use handover::{HandOver, TimeoutNow, TimeoutNowReply, HAND_OVER_LIMIT_MS_MAX, SITE_CUT_MS_MAX};

/// Settings of one node's replication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// This node's id, unique in the cluster (1 for a single node).
    pub node_id: NodeId,
    /// Where the raft RPC listener binds; none on a single node that never grows.
    pub listen: Option<String>,
    /// The address other nodes use to reach `listen` (default: `listen`).
    pub advertise: Option<String>,
    /// Data centre (voters) or hospital site (learners).
    pub site: String,
    /// Initialise a one-voter cluster of this node on first start.
    pub bootstrap_single: bool,
    /// A follower campaigns after hearing nothing from a leader for a random
    /// time in `[election_timeout_min_ms, election_timeout_max_ms]`, and only
    /// after a majority of voters agrees in a pre-vote (see `election`).
    /// The minimum is what guards a healthy leader against needless elections
    /// (leader stickiness, the lease); the spread above it only staggers
    /// candidates, and a narrow one keeps failover short (see the DESIGN note
    /// "Failover time").
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often the leader sends heartbeats. openraft 0.9 also uses it as the
    /// deadline of every AppendEntries, so entries are sent in prefixes sized to
    /// arrive within half of it (see `network`).
    pub heartbeat_interval_ms: u64,
    /// Most entry bytes in one AppendEntries (one entry always goes, however big).
    pub append_bytes_max: usize,
    /// Most bytes of one log entry: a larger command is split into parts that
    /// apply atomically when the last one commits.
    pub command_bytes_max: usize,
    /// Build a snapshot (and compact the log) after this many new entries.
    pub snapshot_entries_since_last: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging nodes catch up from the log.
    pub entries_kept_after_snapshot: u64,
    /// How long a write may wait to be committed before the client gets a 503.
    pub write_timeout_ms: u64,
    /// How long a write or read waits for a reachable leader.
    pub leader_wait_ms: u64,
    /// How long a linearizable read waits for the leader's confirmation and for this node to catch up.
    pub read_timeout_ms: u64,
    /// Accept `POST /raft/fault` (chaos testing only). Only a build with the
    /// `fault-injection` cargo feature has the route; elsewhere turning this
    /// on is a start-up error.
    pub fault_injection: bool,
    /// Emulate this link to every peer from the start (slow WAN links on one machine).
    pub emulate_link: Option<LinkShape>,
    /// Shared secret required on every raft RPC (compared in constant time).
    pub cluster_secret: Option<String>,
    /// Raft over mutual TLS (`[cluster.tls]`): the cluster CA, and this
    /// node's certificate (naming `node-<id>.<role>.hale`) and key.
    pub tls: Option<PeerTlsFiles>,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            node_id: 1,
            listen: None,
            advertise: None,
            site: "local".into(),
            bootstrap_single: true,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 500,
            heartbeat_interval_ms: 100,
            append_bytes_max: 1024 * 1024,
            command_bytes_max: 256 * 1024,
            snapshot_entries_since_last: 50_000,
            entries_kept_after_snapshot: 5_000,
            write_timeout_ms: 10_000,
            leader_wait_ms: 3_000,
            read_timeout_ms: 2_000,
            fault_injection: false,
            emulate_link: None,
            cluster_secret: None,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft storage: {0}")]
    Storage(#[from] openraft::StorageError<NodeId>),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("cannot listen for raft RPC on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("raft: {0}")]
    Fatal(String),
}

/// Requested read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLevel {
    /// Voters: linearizable, or local marked `stale` when the cluster cannot
    /// confirm. Learners: local.
    Default,
    /// Linearizable or an error.
    Linearizable,
    /// This node's state as it is.
    Local,
}

/// What a read reflects.
#[derive(Debug, Clone, Serialize)]
pub struct ReadInfo {
    /// `linearizable`, `local` or `stale`.
    pub consistency: &'static str,
    pub applied_index: u64,
    /// Upper bound on how far behind the leader this node's data may be; `None` when unknown.
    pub staleness_ms: Option<u64>,
    /// Why a linearizable read was downgraded.
    pub reason: Option<String>,
}

/// The answer to a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Done {
        index: u64,
        applied: Applied,
    },
    NotLeader,
    Unavailable(String),
    /// The leader would not append it (its origin did not check out): nothing was written.
    Refused(String),
}

/// Why the leader did not commit a command it was asked to propose itself.
enum HereError {
    /// Leadership moved before anything was appended: safe to send elsewhere.
    NotLeader(String),
    Failed(ProposeError),
}

/// The raft RPCs, for deciding who may send which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    Snapshot,
    Propose,
    ReadIndex,
    Status,
    TimeoutNow,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    Fault,
}

#[derive(Debug, Serialize, Deserialize)]
enum ReadIndexReply {
    Index(u64),
    NotLeader,
    Unavailable(String),
}

/// One node's own view, served on `/raft/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub applied_index: u64,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub millis_since_leader_contact: Option<u64>,
    pub isolated: bool,
    /// When asked for: the store's content hash, read off the apply lock; then
    /// `applied_index` is the index that hash reflects.
    pub content_hash: Option<String>,
    #[serde(default)]
    pub elections: ElectionCounts,
    /// This node's minimum election timeout now: the configured one, or
    /// longer while its machine or links have recently been slow.
    #[serde(default)]
    pub election_min_ms: u64,
    /// The head of the audit hash chain (last audit row's seq and hash), read
    /// on `/raft/status` with the log index it reflects (`audit_head_index`;
    /// equal to `applied_index` when the content hash was asked for). Replicas
    /// at the same index hold the same head: apply computes it.
    #[serde(default)]
    pub audit_head: Option<hale_store::audit::ChainHead>,
    #[serde(default)]
    pub audit_head_index: Option<u64>,
}

/// One member as the cluster status reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub role: String,
    pub site: String,
    pub api_url: String,
    pub raft_addr: String,
    pub reachable: bool,
    pub state: Option<String>,
    pub applied_index: Option<u64>,
    /// Entries behind the answering node's last log entry.
    pub lag_entries: Option<u64>,
    pub last_heard_ms: Option<u64>,
    /// The member's own term and election counters, when it answered.
    #[serde(default)]
    pub term: Option<u64>,
    #[serde(default)]
    pub elections: Option<ElectionCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub answered_by: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("node {leader_id} leads the cluster; send membership changes to it ({leader_api})")]
    NotLeader { leader_id: NodeId, leader_api: String },
    #[error("the cluster has no leader now; retry in a moment")]
    NoLeader,
    #[error("{0}")]
    Refused(String),
}

/// Commit indexes the leader told us, with when: how fresh local data is.
const CONTACTS_MAX: usize = 256;

pub struct RaftNode {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub net: Arc<NetClient>,
    pub settings: RaftSettings,
    pub me: HaleNode,
    /// A read handle on the raft log (its last log id answers pre-votes).
    log: LogStore,
    pub elections: ElectionStats,
    /// When a leader of this node's term (or a later one) last reached it.
    leader_contact: Mutex<Option<Instant>>,
    /// Which leader last reached this node, and the silence before the first
    /// message of a new one: the "ms without a leader" of the change log line.
    heard: Mutex<Heard>,
    /// The silences this node lived through while a leader was alive: they
    /// stretch its minimum election timeout on a slow machine (see `election::Patience`).
    patience: Mutex<Patience>,
    /// Set while a node that started with an empty log has not caught up: it grants no votes.
    vote_withheld: std::sync::atomic::AtomicBool,
    contacts: Mutex<VecDeque<(u64, Instant)>>,
    started: Instant,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Raft mTLS, when `[cluster.tls]` is configured.
    tls: Option<Arc<PeerTls>>,
    /// The server's check of forwarded users (none: user writes forwarded here are refused).
    user_check: Mutex<Option<Arc<dyn UserCheck>>>,
    /// Set while this leader hands over (a drill): it appends nothing new and
    /// answers forwarded writes and read-index requests "not the leader".
    transferring: std::sync::atomic::AtomicBool,
}

/// The leaders that reached this node (see [`RaftNode::leader_reached`]).
#[derive(Default)]
struct Heard {
    /// The leader of the last message, and when it came.
    last: Option<(Leadership, Instant)>,
    /// A new leader, and how long this node heard no leader before its first message.
    handover: Option<(Leadership, Duration)>,
    /// When another candidate last asked this node for a real vote. Like a
    /// leader's message, it restarts the election timer: that candidate gets a
    /// whole timeout to win before this node campaigns over it.
    vote_asked: Option<Instant>,
}

impl RaftNode {
    /// Open the log and store in `dir`, start openraft and (with `listen`) the RPC listener.
    pub async fn start(dir: &Path, settings: RaftSettings, api_url: String) -> Result<Arc<RaftNode>, NodeError> {
        if settings.fault_injection && !cfg!(feature = "fault-injection") {
            return Err(NodeError::Config(
                "fault injection is for test builds: this hale was built without the `fault-injection` feature (cargo build --features fault-injection)".into(),
            ));
        }
        let tls = match &settings.tls {
            Some(files) => {
                let tls = PeerTls::load(files).map_err(NodeError::Config)?;
                match tls.me {
                    Peer::Node { id, .. } if id == settings.node_id => {}
                    other => {
                        return Err(NodeError::Config(format!(
                            "raft mTLS: the certificate {} is for {other}, but this is node {}; issue one with `hale cert issue --node-id {} --role voter|learner`",
                            files.cert.display(),
                            settings.node_id,
                            settings.node_id
                        )))
                    }
                }
                Some(Arc::new(tls))
            }
            None => None,
        };
        let listener = match &settings.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| NodeError::Listen {
                        addr: addr.clone(),
                        source: e,
                    })?,
            ),
            None => None,
        };
        let advertise = match (&settings.advertise, &listener) {
            (Some(a), _) => a.clone(),
            (None, Some(l)) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            (None, None) => String::new(),
        };
        let me = HaleNode {
            raft_addr: advertise,
            api_url,
            site: settings.site.clone(),
        };
        check_timing(&settings)?;
        let config = openraft::Config {
            cluster_name: "hale".into(),
            // openraft's own election timer is off (the `election` driver decides
            // when to campaign). What remains of these is the leader lease: a voter
            // refuses a real vote until it has not heard from its leader for
            // `election_timeout_max`, the same time after which it grants a
            // pre-vote. So a stale pre-vote win cannot depose a live leader, and
            // the leader's read lease (half of it) has the other half as margin.
            election_timeout_min: settings.election_timeout_min_ms / 2,
            election_timeout_max: settings.election_timeout_min_ms,
            enable_elect: false,
            heartbeat_interval: settings.heartbeat_interval_ms,
            install_snapshot_timeout: 5_000,
            max_payload_entries: 512,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_entries_since_last),
            max_in_snapshot_log_to_keep: settings.entries_kept_after_snapshot,
            snapshot_max_chunk_size: settings.append_bytes_max as u64,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| NodeError::Config(e.to_string()))?);
        let log = LogStore::open(dir)?;
        let sm = StateMachineStore::open(dir)?;
        let faults = Arc::new(Faults::default());
        faults.seed(settings.node_id);
        if let Some(shape) = settings.emulate_link {
            faults.set_link(None, shape);
        }
        let net = Arc::new(NetClient::new(
            faults,
            settings.cluster_secret.clone(),
            settings.append_bytes_max,
            Some(settings.node_id),
            tls.as_deref(),
        ));
        let raft = Raft::new(
            settings.node_id,
            config,
            NetworkFactory { client: net.clone() },
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))?;
        let node = Arc::new(RaftNode {
            id: settings.node_id,
            raft,
            sm,
            net,
            settings,
            me,
            log,
            elections: ElectionStats::default(),
            leader_contact: Mutex::new(None),
            heard: Mutex::new(Heard::default()),
            patience: Mutex::new(Patience::default()),
            vote_withheld: std::sync::atomic::AtomicBool::new(false),
            contacts: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            server: Mutex::new(None),
            tls,
            user_check: Mutex::new(None),
            transferring: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(listener) = listener {
            let router = node.router();
            let handle = match &node.tls {
                Some(tls) => tokio::spawn(crate::peer_tls::serve(listener, router, tls.server.clone())),
                None => tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!(error = %e, "raft RPC listener stopped");
                    }
                }),
            };
            *node.server.lock() = Some(handle);
        }
        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        if !initialized && !node.settings.bootstrap_single {
            // No vote, no log: a new node, or one whose data was lost or wiped.
            // Entries a quorum committed with this node's acknowledgement may now
            // exist on only one other node; were this node to vote for a candidate
            // that lacks them, they would be lost. So it votes again only once it
            // has caught up with a leader.
            node.vote_withheld.store(true, Ordering::Release);
            tracing::info!(
                node = node.id,
                "started with an empty log: no votes until a leader has caught this node up"
            );
        }
        if !initialized && node.settings.bootstrap_single {
            let members = BTreeMap::from([(node.id, node.me.clone())]);
            node.raft
                .initialize(members)
                .await
                .map_err(|e| NodeError::Fatal(e.to_string()))?;
            tracing::info!(node = node.id, "initialised a cluster of one");
        }
        node.spawn_address_refresh();
        node.spawn_election_driver();
        node.spawn_change_log();
        Ok(node)
    }

    /// When this node leads and its addresses in the membership are not the
    /// ones it runs with (a single node restarted with `--raft-listen`), update them.
    fn spawn_address_refresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(node) = weak.upgrade() else { return };
                let m = node.metrics();
                if m.current_leader != Some(node.id) {
                    continue;
                }
                let stored = m.membership_config.membership().get_node(&node.id).cloned();
                if stored.as_ref() == Some(&node.me) || stored.is_none() {
                    return;
                }
                let change = ChangeMembers::SetNodes(BTreeMap::from([(node.id, node.me.clone())]));
                match node.raft.change_membership(change, true).await {
                    Ok(_) => {
                        tracing::info!(node = %node.me, "updated this node's addresses in the membership");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not update this node's addresses; retrying"),
                }
            }
        });
    }

    // ------------------------------------------------------------- elections

    /// Campaign only when a leader has been silent for a random election
    /// timeout and a majority of voters agrees in a pre-vote (see `election`).
    fn spawn_election_driver(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut jitter = Jitter::new(self.id ^ 0x4841_4c45);
        let (min_ms, max_ms) = (
            self.settings.election_timeout_min_ms,
            self.settings.election_timeout_max_ms,
        );
        tokio::spawn(async move {
            // Fine-grained, so a campaign starts within a few ms of its
            // timeout (at 40 ms, the tick alone added 20 ms to a failover).
            let tick = Duration::from_millis((min_ms / 40).clamp(5, 20));
            let mut timeout = Duration::from_millis(jitter.between(min_ms, max_ms));
            let mut last_attempt = Instant::now();
            let mut was_leader = false;
            let mut logged_patience_ms = min_ms;
            loop {
                let slept = Instant::now();
                tokio::time::sleep(tick).await;
                let Some(node) = weak.upgrade() else { return };
                // If this node itself was not scheduled for a good part of an
                // election timeout (a starved machine), the silence it measured
                // says nothing about the leader: the leader's messages may be
                // waiting unread. Count afresh.
                let stalled_ms = slept.elapsed().saturating_sub(tick).as_millis() as u64;
                if stalled_ms > min_ms / 4 {
                    tracing::info!(stalled_ms, "this node was not scheduled; restarting its election timer");
                    last_attempt = Instant::now();
                    node.observe_silence(stalled_ms);
                }
                // A machine or link that has recently been slow stretches the
                // wait (`election::Patience`); a healthy one leaves it as configured.
                let patience_ms = node.election_min_ms();
                if patience_ms.abs_diff(logged_patience_ms) >= min_ms / 4 {
                    if patience_ms > min_ms {
                        tracing::info!(
                            election_min_ms = patience_ms,
                            configured_ms = min_ms,
                            "leader messages have recently come slowly: waiting longer before suspecting the leader"
                        );
                    } else {
                        tracing::info!(
                            election_min_ms = patience_ms,
                            "election timeout back to its configured minimum"
                        );
                    }
                    logged_patience_ms = patience_ms;
                }
                let m = node.metrics();
                if m.running_state.is_err() || m.state == ServerState::Shutdown {
                    return;
                }
                let leading = m.state == ServerState::Leader;
                if was_leader && !leading {
                    node.elections.leaderships_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(term = m.current_term, "this node stopped leading while running");
                }
                was_leader = leading;
                if leading || !node.is_voter(&m) {
                    last_attempt = Instant::now();
                    continue;
                }
                // Raft's rule: a vote request from another candidate, like a
                // leader's message, gives it a whole timeout to win before
                // this node campaigns (`Heard::vote_asked`).
                let quiet = node
                    .leader_contact_age()
                    .min(last_attempt.elapsed())
                    .min(node.vote_asked_age().unwrap_or(Duration::MAX));
                if quiet < timeout + Duration::from_millis(patience_ms - min_ms) {
                    continue;
                }
                last_attempt = Instant::now();
                timeout = Duration::from_millis(jitter.between(min_ms, max_ms));
                node.campaign(&m).await;
            }
        });
    }

    /// One INFO line per leader this node learns of and per membership it
    /// sees take effect, with the time it took (see `election::leader_line`);
    /// openraft's own INFO lines are demoted by the binary's default log filter.
    fn spawn_change_log(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut rx = self.raft.server_metrics();
        tokio::spawn(async move {
            let mut leader: Option<Leadership> = None;
            let mut leading_since: Option<Instant> = None;
            let mut stopped_leading: Option<Instant> = None;
            let mut members: Option<Members> = None;
            let mut change_seen: Option<Instant> = None;
            loop {
                let m = rx.borrow_and_update().clone();
                if m.state == ServerState::Shutdown {
                    return;
                }
                let Some(node) = weak.upgrade() else { return };
                let now = Instant::now();
                match (m.state == ServerState::Leader, leading_since) {
                    (true, None) => leading_since = Some(now),
                    (false, Some(_)) => {
                        leading_since = None;
                        stopped_leading = Some(now);
                    }
                    _ => {}
                }
                if let Some(l) = m.current_leader {
                    let new = Leadership {
                        term: m.vote.leader_id.term,
                        node: l,
                    };
                    if leader != Some(new) {
                        let silence = node.leaderless_time(new, leader, stopped_leading);
                        tracing::info!("{}", leader_line(leader, new, silence.as_millis() as u64));
                        leader = Some(new);
                    }
                }
                let stored = &m.membership_config;
                let membership = stored.membership();
                if membership.get_joint_config().len() > 1 {
                    change_seen.get_or_insert(now);
                } else {
                    let now_members = Members {
                        voters: membership.voter_ids().collect(),
                        learners: membership.learner_ids().collect(),
                    };
                    let empty = now_members.voters.is_empty() && now_members.learners.is_empty();
                    // Before initialisation a node has no membership: nothing to say.
                    if members.as_ref() != Some(&now_members) && !empty {
                        let took_ms = change_seen.take().map(|t| t.elapsed().as_millis() as u64);
                        let index = stored.log_id().map_or(0, |l| l.index);
                        let line = membership_line(members.as_ref(), &now_members, index, took_ms);
                        // The leader logged the change it made, with its duration (`add_learner`, ...).
                        if m.current_leader == Some(node.id) && members.is_some() {
                            tracing::debug!("{line}");
                        } else {
                            tracing::info!("{line}");
                        }
                        members = Some(now_members);
                    }
                    change_seen = None;
                }
                drop(node);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// How long this node had no leader before `new`: since the last message
    /// of the previous leader (or this node stopped leading), or since start.
    fn leaderless_time(
        &self,
        new: Leadership,
        previous: Option<Leadership>,
        stopped_leading: Option<Instant>,
    ) -> Duration {
        if previous.is_some_and(|p| p.node == self.id) {
            if let Some(t) = stopped_leading {
                return t.elapsed();
            }
        }
        let heard = self.heard.lock();
        match (heard.handover, heard.last) {
            (Some((l, silence)), _) if l == new && new.node != self.id => silence,
            (_, Some((_, at))) if new.node == self.id => at.elapsed(),
            _ if previous.is_none() => self.started.elapsed(),
            _ => self.leader_contact_age(),
        }
    }

    /// This node went `gap_ms` without a live leader's message, or unscheduled.
    fn observe_silence(&self, gap_ms: u64) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.patience
            .lock()
            .observe(now_ms, gap_ms, self.settings.election_timeout_min_ms);
    }

    /// The minimum election timeout now: the configured one, stretched while
    /// this node's machine or links have recently been slow (`election::Patience`).
    /// It decides when this node campaigns and when it grants a pre-vote.
    pub fn election_min_ms(&self) -> u64 {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.patience
            .lock()
            .election_min_ms(now_ms, self.settings.election_timeout_min_ms)
    }

    /// How long since another candidate asked this node for a vote.
    fn vote_asked_age(&self) -> Option<Duration> {
        self.heard.lock().vote_asked.map(|t| t.elapsed())
    }

    /// Run a pre-vote and, with a majority, start an election.
    async fn campaign(&self, m: &RaftMetrics) {
        let asked_from = Instant::now();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        self.elections.prevotes_started.fetch_add(1, Ordering::Relaxed);
        let last_log_id = match self.log.last_log_id() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this node's own log; not campaigning");
                return;
            }
        };
        let req = PreVoteRequest {
            candidate: self.id,
            term: m.current_term,
            last_log_id,
        };
        // Short, so a grant is fresh when the election starts.
        let timeout = Duration::from_millis(
            (2 * self.settings.heartbeat_interval_ms).min(self.settings.election_timeout_min_ms / 2),
        );
        let asks = voters.iter().filter(|v| **v != self.id).filter_map(|v| {
            let node = membership.get_node(v)?.clone();
            let req = &req;
            Some(async move {
                let r = self
                    .net
                    .post::<_, PreVoteReply>(Some(*v), &node.raft_addr, "/raft/prevote", req, timeout)
                    .await;
                (*v, r)
            })
        });
        let replies = futures::future::join_all(asks).await;
        let mut granted = 1;
        let mut refusals = Vec::new();
        for (v, r) in replies {
            match r {
                Ok(r) if r.granted => granted += 1,
                Ok(r) => refusals.push(format!("node {v}: {}", r.reason.unwrap_or_default())),
                Err(e) => refusals.push(format!("node {v}: {e}")),
            }
        }
        // A leader may have reached this node while it asked: then stay.
        // So too if it granted another candidate's vote meanwhile: that
        // election is under way, and campaigning now would raise the term
        // past it and depose its winner.
        let quiet_ms = self.leader_contact_age().as_millis() as u64;
        let vote_now = self.metrics().vote;
        let asked_meanwhile = self.heard.lock().vote_asked.is_some_and(|t| t >= asked_from);
        if granted * 2 > voters.len() && (vote_now != m.vote || asked_meanwhile) {
            self.elections.prevotes_lost.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                before = %m.vote,
                now = %vote_now,
                asked_meanwhile,
                "pre-vote won, but another candidate asked this node for its vote meanwhile; not campaigning"
            );
        } else if granted * 2 > voters.len() && quiet_ms < self.election_min_ms() {
            self.elections.prevotes_lost.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                quiet_ms,
                "pre-vote won, but a leader reached this node meanwhile; not campaigning"
            );
        } else if granted * 2 > voters.len() {
            self.elections.elections_started.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                term = m.current_term + 1,
                granted,
                voters = voters.len(),
                "no leader heard; pre-vote won, starting an election"
            );
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::error!(error = %e, "could not start an election");
            }
        } else {
            self.elections.prevotes_lost.fetch_add(1, Ordering::Relaxed);
            // Repeats every election timeout while this node is cut off: debug.
            tracing::debug!(granted, voters = voters.len(), refusals = ?refusals, "pre-vote lost; not campaigning");
        }
    }

    /// How long since a leader last reached this node (since start if never).
    fn leader_contact_age(&self) -> Duration {
        self.leader_contact
            .lock()
            .map_or(self.started.elapsed(), |t| t.elapsed())
    }

    fn voter_view(&self) -> Result<VoterView, String> {
        let m = self.metrics();
        Ok(VoterView {
            is_voter: self.is_voter(&m),
            is_leader: m.state == ServerState::Leader,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            // A node that has not heard a leader since it started counts from its start.
            millis_since_leader_contact: Some(self.leader_contact_age().as_millis() as u64),
            last_log_id: self
                .log
                .last_log_id()
                .map_err(|e| format!("cannot read my own log: {e}"))?,
        })
    }

    /// A leader's message at `vote` arrived: if it is at least this node's
    /// vote, the leader is alive for this node.
    fn leader_reached(&self, vote: &openraft::Vote<NodeId>) {
        let m = self.metrics();
        if vote.is_committed() && *vote >= m.vote {
            let now = Instant::now();
            *self.leader_contact.lock() = Some(now);
            let leader = Leadership {
                term: vote.leader_id.term,
                node: vote.leader_id.node_id,
            };
            let mut heard = self.heard.lock();
            if let Some((l, at)) = heard.last {
                if l == leader {
                    self.observe_silence((now - at).as_millis() as u64);
                }
            }
            let silence = match heard.last {
                Some((l, _)) if l == leader => None,
                Some((_, at)) => Some(now - at),
                None => Some(self.started.elapsed()),
            };
            if let Some(silence) = silence {
                heard.handover = Some((leader, silence));
            }
            heard.last = Some((leader, now));
        }
    }

    pub fn election_counts(&self) -> ElectionCounts {
        self.elections.counts()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub fn faults(&self) -> &Faults {
        &self.net.faults
    }

    pub fn applied_index(&self) -> u64 {
        self.sm.applied_index()
    }

    fn is_voter(&self, m: &RaftMetrics) -> bool {
        m.membership_config.membership().voter_ids().any(|v| v == self.id)
    }

    /// Stop raft and the RPC listener.
    pub async fn shutdown(&self) {
        if let Some(h) = self.server.lock().take() {
            h.abort();
        }
        let _ = self.raft.shutdown().await;
    }

    // ---------------------------------------------------------------- writes

    fn quorum_problem(&self, m: &RaftMetrics) -> Option<String> {
        let voters = m.membership_config.membership().voter_ids().count();
        if voters <= 1 {
            return None;
        }
        // Three election timeouts without a quorum's acknowledgement: a majority is
        // gone, not merely slow (a busy 2-core machine can delay one heartbeat round).
        match m.millis_since_quorum_ack {
            Some(ms) if ms > 3 * self.settings.election_timeout_max_ms => Some(format!(
                "no quorum: this node leads but has not heard from a majority of the {voters} voting nodes for {ms} ms, so the write cannot be committed. A majority of voters is down or cut off; reads are still served, marked stale"
            )),
            _ => None,
        }
    }

    /// Why this node cannot commit a write now, without trying: it leads but
    /// has lost its quorum, or no leader has reached it for three election
    /// timeouts (a site cut off from the data centres, a voter in a minority).
    /// None when a write may go through. Cheap: no network.
    pub fn cut_off(&self) -> Option<String> {
        let m = self.metrics();
        if m.current_leader == Some(self.id) {
            return self.quorum_problem(&m);
        }
        let age = self.leader_contact_age();
        let limit = Duration::from_millis(3 * self.settings.election_timeout_max_ms);
        if age > limit {
            return Some(format!(
                "no leader has reached this node for {} ms: it is cut off from a majority of the voting nodes",
                age.as_millis()
            ));
        }
        None
    }

    /// Commit `cmd` on a quorum (forwarding it to the leader if need be) and
    /// return its log index and outcome. A command whose encoding exceeds
    /// `command_bytes_max` goes into the log as parts, proposed in order by
    /// the leader; it takes effect, all or nothing, when its last part
    /// applies. A forwarded command goes whole, with its [`Origin`]
    /// (`forward`), which the leader checks before it appends anything.
    ///
    /// [`Origin`]: crate::forward::Origin
    pub async fn propose(&self, cmd: Command) -> Result<(u64, Applied), ProposeError> {
        const LEADER_RETRY_MS: u64 = 20;
        // How many log entries the command takes bounds how long the leader
        // may take with a forwarded one (counted only when forwarding).
        let mut parts: Option<u64> = None;
        let origin = origin_of(&cmd);
        let forward = ForwardRequest { cmd, origin };
        let start = Instant::now();
        let leader_wait = Duration::from_millis(self.settings.leader_wait_ms);
        let mut last_problem = String::from("no leader is known");
        let mut metrics_rx = self.raft.metrics();
        loop {
            if start.elapsed() > leader_wait {
                return Err(ProposeError::Unavailable(format!(
                    "no reachable leader for {} ms ({last_problem}); the write was not committed. A majority of voting nodes may be down or cut off from this node",
                    self.settings.leader_wait_ms
                )));
            }
            let m = self.metrics();
            match m.current_leader {
                Some(l) if l == self.id => match self.propose_here(&forward.cmd).await {
                    Ok(done) => return Ok(done),
                    Err(HereError::NotLeader(why)) => last_problem = why,
                    Err(HereError::Failed(e)) => return Err(e),
                },
                Some(l) => {
                    let Some(leader) = m.membership_config.membership().get_node(&l).cloned() else {
                        last_problem = format!("leader {l} is not in the membership");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let parts = match parts {
                        Some(n) => n,
                        None => {
                            let n = log_payloads(&forward.cmd, self.settings.command_bytes_max)
                                .map_err(|e| {
                                    ProposeError::Unavailable(format!(
                                        "the write was not committed: it cannot be put in the log ({e})"
                                    ))
                                })?
                                .len() as u64;
                            *parts.insert(n)
                        }
                    };
                    let timeout = Duration::from_millis(self.settings.write_timeout_ms * parts + 1_000);
                    match self
                        .net
                        .post::<_, ForwardReply>(Some(l), &leader.raft_addr, "/raft/propose", &forward, timeout)
                        .await
                    {
                        Ok(ForwardReply::Done { index, applied }) => {
                            // Read-your-writes on this node: wait (briefly) until it has applied the write too.
                            let _ = self
                                .raft
                                .wait(Some(Duration::from_millis(self.settings.read_timeout_ms)))
                                .applied_index_at_least(Some(index), "forwarded write")
                                .await;
                            return Ok((index, applied));
                        }
                        Ok(ForwardReply::NotLeader) => last_problem = format!("node {l} is no longer the leader"),
                        Ok(ForwardReply::Unavailable(why)) => return Err(ProposeError::Unavailable(why)),
                        Ok(ForwardReply::Refused(why)) => {
                            return Err(ProposeError::Unavailable(format!(
                                "the leader (node {l}) refused to append this write, and nothing was written: {why}"
                            )))
                        }
                        Err(e) if e.not_delivered() => last_problem = format!("leader {l}: {e}"),
                        Err(e) => {
                            return Err(ProposeError::Unavailable(format!(
                                "the leader (node {l}) did not confirm the write: {e}. It may still commit: read it back before retrying"
                            )))
                        }
                    }
                }
                None => last_problem = "no leader is elected".into(),
            }
            // Retry the moment this node learns of another leader (the new
            // one after a failover), or after LEADER_RETRY_MS at the latest.
            let seen = m.current_leader;
            let _ = tokio::time::timeout(
                Duration::from_millis(LEADER_RETRY_MS),
                metrics_rx.wait_for(|now| now.current_leader != seen),
            )
            .await;
        }
    }

    /// On the leader: append `cmd` (in parts if it is large) and wait for it
    /// to commit and apply.
    async fn propose_here(&self, cmd: &Command) -> Result<(u64, Applied), HereError> {
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Err(HereError::NotLeader("this node is no longer the leader".into()));
        }
        if self.transferring.load(Ordering::Acquire) {
            return Err(HereError::NotLeader(
                "this node is handing over the leadership (a drill)".into(),
            ));
        }
        if let Some(problem) = self.quorum_problem(&m) {
            return Err(HereError::Failed(ProposeError::Unavailable(problem)));
        }
        let mut parts = log_payloads(cmd, self.settings.command_bytes_max).map_err(|e| {
            HereError::Failed(ProposeError::Unavailable(format!(
                "the write was not committed: it cannot be put in the log ({e})"
            )))
        })?;
        let count = parts.len();
        if count > 1 {
            tracing::debug!(parts = count, "proposing a large command in parts");
        }
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let mut last = None;
        for (i, part) in parts.drain(..).enumerate() {
            // A part is never re-proposed: a duplicate would refuse the whole
            // command. On failure the staged parts are purged by a later command.
            let failed = |why: String| {
                if count > 1 {
                    format!(
                        "the write was not committed (part {} of {count} of a large write failed, so none of it takes effect): {why}",
                        i + 1
                    )
                } else {
                    why
                }
            };
            match tokio::time::timeout(timeout, self.raft.client_write(part)).await {
                Ok(Ok(resp)) => {
                    let applied = resp.data.0.expect("a command entry always has an apply outcome");
                    last = Some((resp.log_id.index, applied));
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) if i == 0 => {
                    return Err(HereError::NotLeader("leadership moved during the write".into()));
                }
                Ok(Err(e)) => {
                    return Err(HereError::Failed(ProposeError::Unavailable(failed(format!(
                        "the write was not committed: {e}"
                    )))))
                }
                Err(_) => {
                    return Err(HereError::Failed(ProposeError::Unavailable(failed(format!(
                        "the write was not committed on a quorum within {} ms. It may still commit: read it back before retrying",
                        self.settings.write_timeout_ms
                    )))))
                }
            }
        }
        let (index, applied) = last.expect("at least one part");
        debug_assert!(
            !matches!(applied, Applied::Staged { .. }),
            "the last part applies the whole command"
        );
        Ok((index, applied))
    }

    /// Install the server's check of forwarded users (see [`crate::forward`]).
    pub fn set_user_check(&self, check: Arc<dyn UserCheck>) {
        *self.user_check.lock() = Some(check);
    }

    /// Whether raft RPC runs over mutual TLS.
    pub fn mtls(&self) -> bool {
        self.tls.is_some()
    }

    // ----------------------------------------------------------------- reads

    /// On the leader: the index a linearizable read must have applied.
    async fn leader_read_index(&self) -> ReadIndexReply {
        let m = self.metrics();
        if m.current_leader != Some(self.id) || self.transferring.load(Ordering::Acquire) {
            return ReadIndexReply::NotLeader;
        }
        // A voter that accepted this leader's AppendEntries refuses any other
        // candidate for `election_timeout_min_ms` after it (openraft's lease and
        // the pre-vote rule), counted from after the request was sent. So if a
        // majority accepted one sent less than half of that ago, no other leader
        // exists now. The ages are measured here, not taken from openraft's
        // metrics, which lag whenever raft's core is busy.
        let lease_ok = self.quorum_acked_within(&m, Duration::from_millis(self.settings.election_timeout_min_ms / 2));
        if lease_ok {
            // Every write this leader acknowledged is applied here (it acknowledges after
            // applying). Writes acknowledged by earlier leaders come before this leader's
            // blank entry in the log, so once an entry of this term is applied they are
            // too: then the applied index is the read index. Until then, wait for the
            // whole log.
            let applied = self.sm.applied_log_id();
            return match applied {
                Some(a) if a.leader_id.term == m.current_term => ReadIndexReply::Index(a.index),
                _ => ReadIndexReply::Index(m.last_log_index.unwrap_or(0)),
            };
        }
        let timeout = Duration::from_millis(self.settings.read_timeout_ms);
        match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => ReadIndexReply::Index(read.map(|l| l.index).unwrap_or(0)),
            Ok(Err(e)) => match e.forward_to_leader::<HaleNode>() {
                Some(_) => ReadIndexReply::NotLeader,
                None => ReadIndexReply::Unavailable(format!("the leader could not confirm its leadership: {e}")),
            },
            Err(_) => ReadIndexReply::Unavailable(format!(
                "the leader could not reach a majority of voters within {} ms",
                self.settings.read_timeout_ms
            )),
        }
    }

    /// True when every voter configuration has a majority (this node counted)
    /// that accepted an AppendEntries of this leader's vote sent within `within`.
    fn quorum_acked_within(&self, m: &RaftMetrics, within: Duration) -> bool {
        m.membership_config
            .membership()
            .get_joint_config()
            .iter()
            .all(|config| {
                let fresh = config
                    .iter()
                    .filter(|v| {
                        **v == self.id
                            || self
                                .net
                                .acked_at(**v, &m.vote)
                                .is_some_and(|sent| sent.elapsed() < within)
                    })
                    .count();
                fresh * 2 > config.len()
            })
    }

    /// Whether this node refuses (pre-)votes: it started with an empty log and
    /// has not yet applied what a leader had committed when it first reached it.
    pub fn vote_withheld(&self) -> bool {
        self.vote_withheld.load(Ordering::Acquire)
    }

    /// A leader reached this node. `leader_commit` is the commit index an
    /// AppendEntries carried; `None` for a snapshot chunk, which says nothing
    /// about what is committed.
    fn record_contact(&self, leader_commit: Option<u64>) {
        // Votes come back only once this node has applied a commit index a
        // leader stated. A snapshot chunk must not count: the first one arrives
        // long before the snapshot is installed, and an empty node that voted
        // during the transfer could elect a candidate missing entries this node
        // had acknowledged before it was wiped (the slow chaos run lost 26
        // acknowledged writes that way: every wipe re-syncs from a snapshot).
        if self.vote_withheld() && leader_commit.is_some_and(|c| self.applied_index() >= c) {
            self.vote_withheld.store(false, Ordering::Release);
            tracing::info!(
                node = self.id,
                applied = self.applied_index(),
                "caught up with the leader after starting empty: votes again"
            );
        }
        let mut c = self.contacts.lock();
        c.push_back((leader_commit.unwrap_or(0), Instant::now()));
        while c.len() > CONTACTS_MAX {
            c.pop_front();
        }
    }

    /// How long ago this node's data was known to be as fresh as the leader's.
    fn staleness_ms(&self, m: &RaftMetrics) -> Option<u64> {
        if m.current_leader == Some(self.id) {
            let voters = m.membership_config.membership().voter_ids().count();
            if voters <= 1 {
                return Some(0);
            }
            return m.millis_since_quorum_ack;
        }
        let applied = self.applied_index();
        let c = self.contacts.lock();
        if let Some((_, t)) = c.iter().rev().find(|(commit, _)| *commit <= applied) {
            return Some(t.elapsed().as_millis() as u64);
        }
        // Behind even the oldest contact we remember: at least that old.
        c.front().map(|(_, t)| t.elapsed().as_millis() as u64)
    }

    fn local_info(&self, m: &RaftMetrics, consistency: &'static str, reason: Option<String>) -> ReadInfo {
        ReadInfo {
            consistency,
            applied_index: self.applied_index(),
            staleness_ms: self.staleness_ms(m),
            reason,
        }
    }

    /// Make a read safe at `level`, or say why it cannot be.
    pub async fn read_barrier(&self, level: ReadLevel) -> Result<ReadInfo, String> {
        let m = self.metrics();
        let level = match level {
            ReadLevel::Default if !self.is_voter(&m) => ReadLevel::Local,
            l => l,
        };
        if level == ReadLevel::Local {
            return Ok(self.local_info(&m, "local", None));
        }
        let reply = match m.current_leader {
            Some(l) if l == self.id => self.leader_read_index().await,
            Some(l) => match m.membership_config.membership().get_node(&l).cloned() {
                Some(leader) => {
                    let timeout = Duration::from_millis(self.settings.read_timeout_ms);
                    match self
                        .net
                        .post::<_, ReadIndexReply>(Some(l), &leader.raft_addr, "/raft/read-index", &(), timeout)
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => ReadIndexReply::Unavailable(format!("the leader (node {l}) could not be asked: {e}")),
                    }
                }
                None => ReadIndexReply::Unavailable(format!("leader {l} is not in the membership")),
            },
            None => ReadIndexReply::Unavailable("no leader is elected".into()),
        };
        let problem = match reply {
            ReadIndexReply::Index(index) => {
                // Usually applied already (a leader's read index is its applied
                // index): then skip openraft's metrics wait, which subscribes
                // and clones the metrics on every read.
                let waited = if self.applied_index() >= index {
                    Ok(())
                } else {
                    self.raft
                        .wait(Some(Duration::from_millis(self.settings.read_timeout_ms)))
                        .applied_index_at_least(Some(index), "linearizable read")
                        .await
                        .map(|_| ())
                };
                match waited {
                    Ok(_) => {
                        return Ok(ReadInfo {
                            consistency: "linearizable",
                            applied_index: self.applied_index(),
                            staleness_ms: Some(0),
                            reason: None,
                        })
                    }
                    Err(_) => format!(
                        "this node did not catch up to the leader's index {index} within {} ms",
                        self.settings.read_timeout_ms
                    ),
                }
            }
            ReadIndexReply::NotLeader => "leadership is changing".to_string(),
            ReadIndexReply::Unavailable(why) => why,
        };
        if level == ReadLevel::Linearizable {
            return Err(format!("a linearizable read is not possible now: {problem}"));
        }
        // Fresh metrics: the leader check above may have taken a while.
        Ok(self.local_info(&self.metrics(), "stale", Some(problem)))
    }

    // ---------------------------------------------------------------- status

    pub fn node_status(&self) -> NodeStatus {
        let m = self.metrics();
        let millis_since_leader_contact = if m.current_leader == Some(self.id) {
            Some(0)
        } else {
            self.contacts.lock().back().map(|(_, t)| t.elapsed().as_millis() as u64)
        };
        NodeStatus {
            id: self.id,
            state: state_name(m.state, self.is_voter(&m)).into(),
            term: m.current_term,
            leader: m.current_leader,
            applied_index: self.applied_index(),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            millis_since_leader_contact,
            isolated: self.faults().isolated(),
            content_hash: None,
            elections: self.election_counts(),
            election_min_ms: self.election_min_ms(),
            audit_head: None,
            audit_head_index: None,
        }
    }

    /// Every member, asked in parallel for its own view.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let my_last = m.last_log_index.unwrap_or(0);
        let mut asks = Vec::new();
        for (id, node) in membership.nodes() {
            let id = *id;
            let node = node.clone();
            let role = if voters.contains(&id) { "voter" } else { "learner" };
            asks.push(async move {
                let own = if id == self.id {
                    Ok(self.node_status())
                } else {
                    self.net
                        .post::<_, NodeStatus>(
                            Some(id),
                            &node.raft_addr,
                            "/raft/status",
                            &false,
                            Duration::from_millis(500),
                        )
                        .await
                };
                let last_heard_ms = if id == self.id {
                    Some(0)
                } else {
                    self.net.last_heard(id).map(|t| t.elapsed().as_millis() as u64)
                };
                match own {
                    Ok(s) => MemberStatus {
                        id,
                        role: role.into(),
                        site: node.site.clone(),
                        api_url: node.api_url.clone(),
                        raft_addr: node.raft_addr.clone(),
                        reachable: true,
                        state: Some(s.state),
                        applied_index: Some(s.applied_index),
                        lag_entries: Some(my_last.saturating_sub(s.applied_index)),
                        last_heard_ms,
                        term: Some(s.term),
                        elections: Some(s.elections),
                    },
                    Err(_) => MemberStatus {
                        id,
                        role: role.into(),
                        site: node.site.clone(),
                        api_url: node.api_url.clone(),
                        raft_addr: node.raft_addr.clone(),
                        reachable: false,
                        state: None,
                        applied_index: None,
                        lag_entries: None,
                        last_heard_ms,
                        term: None,
                        elections: None,
                    },
                }
            });
        }
        let mut members = Vec::new();
        for a in asks {
            members.push(a.await);
        }
        ClusterStatus {
            answered_by: self.id,
            leader: m.current_leader,
            term: m.current_term,
            members,
        }
    }

    // ------------------------------------------------------------ membership

    fn admin_error(&self, e: RaftError<NodeId, ClientWriteError<NodeId, HaleNode>>) -> AdminError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match (f.leader_id, f.leader_node) {
                (Some(id), Some(n)) => AdminError::NotLeader {
                    leader_id: id,
                    leader_api: n.api_url,
                },
                _ => AdminError::NoLeader,
            },
            other => AdminError::Refused(other.to_string()),
        }
    }

    /// Start a new cluster whose only voter is this node.
    pub async fn init(&self) -> Result<(), AdminError> {
        let members = BTreeMap::from([(self.id, self.me.clone())]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| AdminError::Refused(format!("cannot initialise: {e}")))?;
        // The founding node holds the whole (empty) history: nothing to catch up.
        self.vote_withheld.store(false, Ordering::Release);
        tracing::info!(
            node = self.id,
            "initialised a new cluster with this node as its only voter"
        );
        Ok(())
    }

    pub async fn add_learner(&self, id: NodeId, node: HaleNode) -> Result<(), AdminError> {
        let started = Instant::now();
        let r = self.raft.add_learner(id, node, false).await;
        self.log_membership_change(&format!("node {id} joined as a learner"), started, r)
    }

    pub async fn promote(&self, id: NodeId) -> Result<(), AdminError> {
        let started = Instant::now();
        let r = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await;
        self.log_membership_change(&format!("node {id} became a voter"), started, r)
    }

    /// The leader's one INFO line for a membership change it made, with the
    /// time from the request to its commit (other nodes log what they see).
    fn log_membership_change(
        &self,
        what: &str,
        started: Instant,
        r: Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, HaleNode>>,
        >,
    ) -> Result<(), AdminError> {
        match r {
            Ok(resp) => {
                let members = resp.membership.as_ref().map(|m| Members {
                    voters: m.voter_ids().collect(),
                    learners: m.learner_ids().collect(),
                });
                let now = members.map(|m| format!("; now {m}")).unwrap_or_default();
                tracing::info!(
                    "membership: {what} in {} ms (log index {}{now})",
                    started.elapsed().as_millis(),
                    resp.log_id.index
                );
                Ok(())
            }
            Err(e) => Err(self.admin_error(e)),
        }
    }

    pub async fn remove(&self, id: NodeId) -> Result<(), AdminError> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(AdminError::Refused(format!("node {id} is not a member")));
        }
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let started = Instant::now();
        let r = self.raft.change_membership(change, false).await;
        self.log_membership_change(&format!("node {id} removed"), started, r)
    }

    // ------------------------------------------------------------------- RPC

    /// The raft RPC routes, served on the raft listener.
    pub fn router(self: &Arc<Self>) -> Router {
        let router = Router::new()
            .route("/raft/append", post(rpc_append))
            .route("/raft/vote", post(rpc_vote))
            .route("/raft/prevote", post(rpc_prevote))
            .route("/raft/snapshot", post(rpc_snapshot))
            .route("/raft/propose", post(rpc_propose))
            .route("/raft/read-index", post(rpc_read_index))
            .route("/raft/timeout-now", post(rpc_timeout_now))
            .route("/raft/status", post(rpc_status));
        // The fault-injection route exists only in test builds: elsewhere it is a 404.
        #[cfg(feature = "fault-injection")]
        let router = router.route("/raft/fault", post(rpc_fault));
        router
            .layer(DefaultBodyLimit::max(RPC_BODY_BYTES_MAX))
            .with_state(self.clone())
    }

    /// May this request go on? The cluster secret (constant time), then,
    /// under mTLS, the sender as its certificate proves it: the node id it
    /// claims (header, and `claimed` from the body) must be its own, and only
    /// voter certificates may take part in elections and replicate as leader.
    fn admit(
        &self,
        peer: Option<Peer>,
        headers: &HeaderMap,
        rpc: Rpc,
        claimed: Option<NodeId>,
    ) -> Result<(), Response> {
        let forbidden = |why: String| Err((StatusCode::FORBIDDEN, format!("{why}\n")).into_response());
        if let Some(secret) = &self.settings.cluster_secret {
            let got = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
            if !secret_eq(got, secret.as_bytes()) {
                return Err((StatusCode::UNAUTHORIZED, "missing or wrong cluster secret\n").into_response());
            }
        }
        if self.tls.is_some() {
            let Some(peer) = peer else {
                return forbidden("raft RPC needs a client certificate from the cluster CA".into());
            };
            let header_id =
                |name: &str| -> Result<Option<NodeId>, Response> {
                    match headers.get(name) {
                        None => Ok(None),
                        Some(v) => v.to_str().ok().and_then(|v| v.parse().ok()).map(Some).ok_or_else(|| {
                            (StatusCode::BAD_REQUEST, format!("{name} is not a node id\n")).into_response()
                        }),
                    }
                };
            if let Some(to) = header_id(TO_HEADER)? {
                if to != self.id {
                    return Err((
                        StatusCode::MISDIRECTED_REQUEST,
                        format!("this is node {}, not node {to}\n", self.id),
                    )
                        .into_response());
                }
            }
            for (what, id) in [("the request", header_id(FROM_HEADER)?), ("the message", claimed)] {
                if let Some(id) = id {
                    if peer.node_id() != Some(id) {
                        return forbidden(format!(
                            "the client certificate is {peer}, but {what} claims to come from node {id}"
                        ));
                    }
                }
            }
            match rpc {
                Rpc::Append | Rpc::Vote | Rpc::PreVote | Rpc::Snapshot | Rpc::TimeoutNow => {
                    if !matches!(peer, Peer::Node { voter: true, .. }) {
                        return forbidden(format!(
                            "{peer} may not vote, campaign or replicate as a leader: that needs a voter certificate"
                        ));
                    }
                }
                Rpc::Propose | Rpc::ReadIndex => {
                    if peer == Peer::Operator {
                        return forbidden("an operator certificate may read status only".into());
                    }
                }
                Rpc::Status | Rpc::Fault => {}
            }
        }
        // A drill pause still takes forwarded writes and read-index requests:
        // their handlers answer "not the leader", which the sender may safely
        // retry elsewhere (a 503 would leave a write "may still commit").
        let drill_passes =
            matches!(rpc, Rpc::Propose | Rpc::ReadIndex) && !self.faults().isolated.load(Ordering::Acquire);
        if !matches!(rpc, Rpc::Status | Rpc::Fault) && self.faults().isolated() && !drill_passes {
            let why = if self.faults().paused() {
                "paused for a drill"
            } else {
                "isolated by fault injection"
            };
            return Err((StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response());
        }
        Ok(())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The timing settings must leave room for the pre-vote and the leader lease.
fn check_timing(s: &RaftSettings) -> Result<(), NodeError> {
    if s.heartbeat_interval_ms == 0 || s.heartbeat_interval_ms * 3 > s.election_timeout_min_ms {
        return Err(NodeError::Config(format!(
            "heartbeat_interval_ms ({}) must be positive and at most a third of election_timeout_min_ms ({}), so that a follower hears several heartbeats before it suspects the leader",
            s.heartbeat_interval_ms, s.election_timeout_min_ms
        )));
    }
    if s.election_timeout_max_ms < s.election_timeout_min_ms {
        return Err(NodeError::Config(format!(
            "election_timeout_max_ms ({}) is below election_timeout_min_ms ({})",
            s.election_timeout_max_ms, s.election_timeout_min_ms
        )));
    }
    if s.command_bytes_max < 4 * 1024 || s.append_bytes_max < s.command_bytes_max {
        return Err(NodeError::Config(format!(
            "command_bytes_max ({}) must be at least 4096 and at most append_bytes_max ({})",
            s.command_bytes_max, s.append_bytes_max
        )));
    }
    Ok(())
}

fn state_name(s: ServerState, voter: bool) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower if voter => "follower",
        ServerState::Follower | ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

type Node = State<Arc<RaftNode>>;
/// The sender's identity from its client certificate (none without mTLS).
type PeerExt = Option<Extension<Peer>>;

fn peer(p: PeerExt) -> Option<Peer> {
    p.map(|Extension(p)| p)
}

/// The log entries that carry `cmd`: its binary encoding, once, when that fits
/// in `bytes_max`; otherwise the parts [`split_command`] cuts it into (a rare
/// large write), each encoded once. Nothing else encodes a command for the log.
fn log_payloads(cmd: &Command, bytes_max: usize) -> Result<Vec<Payload>, hale_store::SplitError> {
    let whole = Payload::encode(cmd);
    if whole.len() <= bytes_max {
        return Ok(vec![whole]);
    }
    let group = uuid::Uuid::new_v4().to_string();
    Ok(split_command(cmd, bytes_max, &group)?
        .iter()
        .map(Payload::encode)
        .collect())
}

async fn rpc_append(State(n): Node, p: PeerExt, headers: HeaderMap, body: bytes::Bytes) -> Response {
    // The binary frame the leaders send, or JSON (tools, tests, older nodes).
    let req: AppendEntriesRequest<TypeConfig> = match crate::frame::decode_append(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                format!("the AppendEntries request does not decode: {e}"),
            )
                .into_response()
        }
    };
    if let Err(r) = n.admit(peer(p), &headers, Rpc::Append, req.vote.leader_id().voted_for()) {
        return r;
    }
    let commit = req.leader_commit.map(|l| l.index);
    let vote = req.vote;
    n.leader_reached(&vote);
    let res = n.raft.append_entries(req).await;
    if matches!(&res, Ok(openraft::raft::AppendEntriesResponse::Success)) {
        n.record_contact(commit);
    }
    // Taking a large append can outlast an election timeout on a busy machine:
    // the leader was alive all along, so count from when it was taken.
    if res.is_ok() {
        n.leader_reached(&vote);
    }
    Json(res).into_response()
}

async fn rpc_vote(State(n): Node, p: PeerExt, headers: HeaderMap, Json(req): Json<VoteRequest<NodeId>>) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::Vote, req.vote.leader_id().voted_for()) {
        return r;
    }
    if n.vote_withheld() {
        tracing::debug!(
            candidate = req.vote.leader_id().voted_for(),
            "vote refused: this node started empty and has not caught up"
        );
        let refused: Result<openraft::raft::VoteResponse<NodeId>, RaftError<NodeId>> =
            Ok(openraft::raft::VoteResponse {
                vote: req.vote,
                vote_granted: false,
                last_log_id: n.metrics().last_applied,
            });
        return Json(refused).into_response();
    }
    if req.vote.leader_id().voted_for() != Some(n.id) {
        n.heard.lock().vote_asked = Some(Instant::now());
    }
    Json(n.raft.vote(req).await).into_response()
}

async fn rpc_prevote(State(n): Node, p: PeerExt, headers: HeaderMap, Json(req): Json<PreVoteRequest>) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::PreVote, Some(req.candidate)) {
        return r;
    }
    let decision = if n.vote_withheld() {
        Err(
            "this node started with an empty log (new, or its data was lost) and has not caught up with a leader yet"
                .to_string(),
        )
    } else {
        n.voter_view()
            .and_then(|view| decide_prevote(&view, &req, n.election_min_ms()))
    };
    if let Err(why) = &decision {
        tracing::debug!(candidate = req.candidate, reason = %why, "pre-vote refused");
    }
    Json(PreVoteReply {
        granted: decision.is_ok(),
        term: n.metrics().current_term,
        reason: decision.err(),
    })
    .into_response()
}

async fn rpc_snapshot(
    State(n): Node,
    p: PeerExt,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::Snapshot, req.vote.leader_id().voted_for()) {
        return r;
    }
    n.record_contact(None);
    n.leader_reached(&req.vote);
    // openraft 0.9 sends a follower no heartbeat while a snapshot streams to it,
    // and snapshot chunks bypass RaftCore, so nothing would reset this node's
    // election timer during a transfer longer than the election timeout: it
    // would campaign, depose the leader and abort the transfer, forever (found
    // by the chaos harness: a wiped voter never re-synced). An empty
    // AppendEntries with the sender's vote is a heartbeat: it matches any log,
    // appends nothing and commits nothing.
    let keepalive = AppendEntriesRequest {
        vote: req.vote,
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    };
    let _ = n.raft.append_entries(keepalive).await;
    Json(n.raft.install_snapshot(req).await).into_response()
}

async fn rpc_propose(State(n): Node, p: PeerExt, headers: HeaderMap, Json(req): Json<ForwardRequest>) -> Response {
    let peer = peer(p);
    if let Err(r) = n.admit(peer, &headers, Rpc::Propose, None) {
        return r;
    }
    let m = n.metrics();
    if m.current_leader != Some(n.id) {
        return Json(ForwardReply::NotLeader).into_response();
    }
    // The leader takes no forwarded actor on trust (see `forward`).
    let users = n.user_check.lock().clone();
    if let Err(why) = check_forwarded(&req.cmd, &req.origin, peer, users.as_deref()).await {
        tracing::warn!(
            from = ?peer,
            user = %req.cmd.actor.user,
            role = %req.cmd.actor.role,
            reason = %why,
            "refused a forwarded write"
        );
        return Json(ForwardReply::Refused(why)).into_response();
    }
    let reply = match n.propose_here(&req.cmd).await {
        Ok((index, applied)) => ForwardReply::Done { index, applied },
        // Not appended: the forwarding node may safely send it elsewhere.
        Err(HereError::NotLeader(_)) => ForwardReply::NotLeader,
        Err(HereError::Failed(e)) => ForwardReply::Unavailable(e.to_string()),
    };
    #[cfg(feature = "fault-injection")]
    if n.settings.fault_injection
        && matches!(reply, ForwardReply::Done { .. })
        && n.faults()
            .drop_propose_replies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| k.checked_sub(1))
            .is_ok()
    {
        tracing::warn!("fault injection: dropping the answer to a committed forwarded write");
        return (StatusCode::SERVICE_UNAVAILABLE, "fault injection: answer dropped\n").into_response();
    }
    Json(reply).into_response()
}

async fn rpc_read_index(State(n): Node, p: PeerExt, headers: HeaderMap) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::ReadIndex, None) {
        return r;
    }
    Json(n.leader_read_index().await).into_response()
}

async fn rpc_status(State(n): Node, p: PeerExt, headers: HeaderMap, Json(with_hash): Json<bool>) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::Status, None) {
        return r;
    }
    // Status answers even when isolated: the chaos harness reads it from outside.
    let mut status = n.node_status();
    // Hashing reads the whole store: off the async threads and outside the
    // apply lock, or a status poll starves this node's heartbeats and
    // elections (seen under a CPU hog: a follower stalled for over a second
    // and a needless election followed). The applied index is then the one
    // the hash reflects. The audit chain head (a primary-key read) comes from
    // the same read transaction, so both reflect the same index.
    let dir = n.sm.data_dir().to_path_buf();
    let read = move || -> Result<_, hale_store::StoreError> {
        let snap = hale_store::export::Snapshot::open(&dir)?;
        let head = snap.audit_head()?;
        let hash = if with_hash { Some(snap.content_hash()?) } else { None };
        Ok((snap.last_applied(), hash, head))
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok((applied, hash, head))) => {
            if let Some(hash) = hash {
                status.applied_index = applied;
                status.content_hash = Some(hash);
            }
            status.audit_head = head;
            status.audit_head_index = Some(applied);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "could not read the store for a status request"),
        Err(e) => tracing::warn!(error = %e, "the store status task failed"),
    }
    Json(status).into_response()
}

/// A change of injected faults; absent fields stay as they are.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRequest {
    pub isolated: Option<bool>,
    /// Emulate this link to every peer (all zero: a plain link).
    pub link: Option<LinkShape>,
    /// Emulate links to particular peers, overriding `link`.
    pub links_to: BTreeMap<NodeId, LinkShape>,
    /// On the leader: drop this many answers to forwarded writes after they commit.
    #[serde(default)]
    pub drop_propose_replies: Option<u32>,
}

#[cfg(feature = "fault-injection")]
async fn rpc_fault(State(n): Node, p: PeerExt, headers: HeaderMap, Json(req): Json<FaultRequest>) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::Fault, None) {
        return r;
    }
    if !n.settings.fault_injection {
        return (
            StatusCode::FORBIDDEN,
            "fault injection is off on this node (start it with --fault-injection)\n",
        )
            .into_response();
    }
    if let Some(isolated) = req.isolated {
        n.faults().isolated.store(isolated, Ordering::Release);
        tracing::warn!(isolated, "fault injection: isolation changed");
    }
    if let Some(k) = req.drop_propose_replies {
        n.faults().drop_propose_replies.store(k, Ordering::Release);
        tracing::warn!(k, "fault injection: answers to forwarded writes will be dropped");
    }
    if let Some(shape) = req.link {
        n.faults().set_link(None, shape);
        tracing::warn!(?shape, "fault injection: every link emulated");
    }
    for (peer, shape) in &req.links_to {
        n.faults().set_link(Some(*peer), *shape);
        tracing::warn!(peer, ?shape, "fault injection: link emulated");
    }
    Json(req).into_response()
}

/// `Proposer` for the server: every write goes through raft.
pub struct RaftProposer(pub Arc<RaftNode>);

impl Proposer for RaftProposer {
    fn propose(&self, cmd: Command) -> ProposeFuture<'_> {
        Box::pin(self.0.propose(cmd))
    }

    fn last_applied(&self) -> u64 {
        self.0.applied_index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_node_votes_again_only_after_applying_a_commit_a_leader_stated() {
        let dir = tempfile::tempdir().unwrap();
        let settings = RaftSettings {
            node_id: 2,
            listen: None,
            bootstrap_single: false,
            ..RaftSettings::default()
        };
        let n = RaftNode::start(dir.path(), settings, "http://127.0.0.1:9".into())
            .await
            .unwrap();
        assert!(n.vote_withheld(), "started with an empty log");
        // A snapshot chunk: nothing is installed yet, so nothing is caught up.
        n.record_contact(None);
        assert!(n.vote_withheld(), "a snapshot chunk must not give the vote back");
        // An append stating commit 5 while this node has applied nothing.
        n.record_contact(Some(5));
        assert!(n.vote_withheld());
        // A leader whose commit this node has applied.
        n.record_contact(Some(n.applied_index()));
        assert!(!n.vote_withheld());
        n.shutdown().await;
    }
}
