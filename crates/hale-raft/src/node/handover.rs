//! Drills on a live cluster: a leader hands over (to a chosen voter, or by
//! stopping for a moment and letting the election driver pick one), and a
//! learner cuts itself off for a while, as its site would be.
//!
//! openraft 0.9 has no leadership transfer, and its leader lease makes every
//! voter refuse a real vote for `election_timeout_min_ms` after it last heard
//! its leader. So a hand-over is built from what raft already guarantees:
//! the leader stops appending (`transferring`: new writes and read-index
//! requests are answered "not the leader", which senders retry safely), waits
//! briefly for the target to hold its whole log, then pauses its raft traffic
//! (`Faults::pause_for`, bounded, ending by itself). The target, told by
//! `/raft/timeout-now`, campaigns as soon as the lease it granted has run out
//! (no pre-vote: the leader asked for it); with `stop_leader` nobody is told
//! and the ordinary election driver takes over, as after a crash. The paused
//! leader looks at the other voters until one of them leads, then resumes
//! and follows. Safety stays openraft's: every vote is still checked.

use super::*;

/// Most a hand-over may keep the leader paused.
pub const HAND_OVER_LIMIT_MS_MAX: u64 = 60_000;
/// Most a site cut-off drill may last.
pub const SITE_CUT_MS_MAX: u64 = 600_000;
/// How long the leader waits for the target to hold its whole log before pausing.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// How often the paused leader looks at the other voters.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Sent by a leader to the voter it hands over to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutNow {
    pub leader: NodeId,
    pub term: u64,
    /// How long the target may take to become leader.
    pub limit_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutNowReply {
    pub elected: bool,
    pub term: u64,
    pub reason: Option<String>,
}

/// What a hand-over did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandOver {
    pub from: NodeId,
    /// The voter asked to take over (none with `stop_leader`).
    pub target: Option<NodeId>,
    /// The voter that leads now (none: no standby took over within the limit).
    pub new_leader: Option<NodeId>,
    pub term_before: u64,
    pub term_after: Option<u64>,
    /// Wall-clock ms when this leader stopped appending (RTO counts from here).
    pub stopped_at_ms: i64,
    /// From the stop to another voter saying it leads.
    pub elected_ms: Option<u64>,
    /// How long the leader waited for the target to hold its whole log.
    pub catch_up_wait_ms: u64,
    pub problems: Vec<String>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RaftNode {
    /// On the leader: hand the leadership to `target` (or, with `stop_leader`,
    /// stop for up to `limit` and let the election driver choose). Refused
    /// unless this node leads at least 3 voters that all answer now, so a
    /// drill never leaves the cluster without a quorum. `on_stop` runs at the
    /// moment this leader stops taking writes (where an RTO counts from).
    pub async fn hand_over(
        &self,
        target: Option<NodeId>,
        stop_leader: bool,
        limit: Duration,
        on_stop: impl FnOnce(),
    ) -> Result<HandOver, AdminError> {
        let limit = limit.min(Duration::from_millis(HAND_OVER_LIMIT_MS_MAX));
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Err(
                match m
                    .current_leader
                    .and_then(|l| m.membership_config.membership().get_node(&l).cloned().map(|n| (l, n)))
                {
                    Some((leader_id, n)) => AdminError::NotLeader {
                        leader_id,
                        leader_api: n.api_url,
                    },
                    None => AdminError::NoLeader,
                },
            );
        }
        let membership = m.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if voters.len() < 3 {
            return Err(AdminError::Refused(format!(
                "a failover drill needs at least 3 voting nodes; this cluster has {}, so the others could not elect a leader without this one. Add voters first (hale cluster add-learner, then promote)",
                voters.len()
            )));
        }
        if let Some(problem) = self.quorum_problem(&m) {
            return Err(AdminError::Refused(problem));
        }
        let others: Vec<(NodeId, HaleNode)> = voters
            .iter()
            .filter(|v| **v != self.id)
            .filter_map(|v| Some((*v, membership.get_node(v)?.clone())))
            .collect();
        // Every other voter must answer now: a drill with one of them down
        // would leave no margin.
        for (id, node) in &others {
            let s = self
                .net
                .post::<_, NodeStatus>(
                    Some(*id),
                    &node.raft_addr,
                    "/raft/status",
                    &false,
                    Duration::from_secs(2),
                )
                .await;
            if let Err(e) = s {
                return Err(AdminError::Refused(format!(
                    "voter {id} does not answer ({e}); a failover drill now could leave the cluster without a leader. Bring it back first (hale cluster status shows each node)"
                )));
            }
        }
        let matched = |m: &RaftMetrics, id: NodeId| -> Option<u64> {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index)
        };
        let target = if stop_leader {
            None
        } else {
            match target {
                Some(t) if t == self.id => {
                    return Err(AdminError::Refused(format!(
                        "node {t} already leads; name another voter as the target"
                    )))
                }
                Some(t) if !others.iter().any(|(id, _)| *id == t) => {
                    return Err(AdminError::Refused(format!("node {t} is not a voter of this cluster")))
                }
                Some(t) => Some(t),
                None => others
                    .iter()
                    .map(|(id, _)| *id)
                    .max_by_key(|id| (matched(&m, *id), *id)),
            }
        };
        let term_before = m.current_term;
        let mut problems = Vec::new();
        let stopped = Instant::now();
        let stopped_at_ms = wall_ms();
        self.transferring.store(true, Ordering::Release);
        on_stop();
        // Nothing new is appended now; let the target receive what is in flight.
        let wait_started = Instant::now();
        if let Some(t) = target {
            loop {
                let m = self.metrics();
                if matched(&m, t) >= m.last_log_index {
                    break;
                }
                if wait_started.elapsed() > CATCH_UP_WAIT {
                    problems.push(format!(
                        "node {t} did not hold this leader's whole log within {} ms; it may lose the election to a more up-to-date voter",
                        CATCH_UP_WAIT.as_millis()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let catch_up_wait_ms = wait_started.elapsed().as_millis() as u64;
        self.faults().pause_for(limit);
        tracing::warn!(
            target = ?target,
            limit_ms = limit.as_millis() as u64,
            "drill: this leader stops and hands over"
        );
        let ask = target.and_then(|t| others.iter().find(|(id, _)| *id == t).cloned());
        let told = ask.map(|(t, node)| {
            let req = TimeoutNow {
                leader: self.id,
                term: term_before,
                limit_ms: limit.as_millis() as u64,
            };
            let net = self.net.clone();
            tokio::spawn(async move {
                net.post_during_pause::<_, TimeoutNowReply>(Some(t), &node.raft_addr, "/raft/timeout-now", &req, limit)
                    .await
            })
        });
        let mut new_leader = None;
        while stopped.elapsed() < limit {
            for (id, node) in &others {
                let s = self
                    .net
                    .post_during_pause::<_, NodeStatus>(
                        Some(*id),
                        &node.raft_addr,
                        "/raft/status",
                        &false,
                        Duration::from_millis(500),
                    )
                    .await;
                if let Ok(s) = s {
                    if s.state == "leader" && s.term > term_before {
                        new_leader = Some((*id, s.term, stopped.elapsed()));
                        break;
                    }
                }
            }
            if new_leader.is_some() {
                break;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        self.faults().unpause();
        // Take no write as leader until this node has heard of its successor:
        // one appended now would only be cut from the log again.
        if new_leader.is_some() {
            let heard = Instant::now();
            while self.metrics().current_leader == Some(self.id) && heard.elapsed() < CATCH_UP_WAIT {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.transferring.store(false, Ordering::Release);
        let elected = new_leader.map(|(id, _, _)| id);
        if let (Some(told), Some(t)) = (told, target) {
            if elected != Some(t) {
                match tokio::time::timeout(CATCH_UP_WAIT, told).await {
                    Ok(Ok(Ok(r))) if !r.elected => problems.push(format!(
                        "the target, node {t}, did not become leader: {}",
                        r.reason.unwrap_or_default()
                    )),
                    Ok(Ok(Err(e))) => problems.push(format!("the target, node {t}, did not take over: {e}")),
                    _ => problems.push(format!("the target, node {t}, did not take over")),
                }
            } else {
                told.abort();
            }
        }
        let report = HandOver {
            from: self.id,
            target,
            new_leader: new_leader.map(|(id, _, _)| id),
            term_before,
            term_after: new_leader.map(|(_, t, _)| t),
            stopped_at_ms,
            elected_ms: new_leader.map(|(_, _, d)| d.as_millis() as u64),
            catch_up_wait_ms,
            problems,
        };
        match report.new_leader {
            Some(l) => tracing::info!(
                new_leader = l,
                elected_ms = report.elected_ms,
                "drill: leadership handed over"
            ),
            None => tracing::error!(
                limit_ms = limit.as_millis() as u64,
                "drill: NO STANDBY TOOK OVER while this leader was stopped; it leads again"
            ),
        }
        Ok(report)
    }

    /// On a learner: cut this node off from raft traffic for `d` (its site
    /// cut off from the data centres); it reconnects by itself.
    pub fn cut_site(&self, d: Duration) -> Result<u64, AdminError> {
        let m = self.metrics();
        if self.is_voter(&m) {
            return Err(AdminError::Refused(format!(
                "node {} is a voter; a site cut-off drill cuts off a learner (a hospital site). For a voter, run a failover or voter-restart drill",
                self.id
            )));
        }
        if d.is_zero() || d > Duration::from_millis(SITE_CUT_MS_MAX) {
            return Err(AdminError::Refused(format!(
                "a site cut-off lasts between 1 ms and {} s",
                SITE_CUT_MS_MAX / 1000
            )));
        }
        self.faults().pause_for(d);
        tracing::warn!(
            ms = d.as_millis() as u64,
            "drill: this site is cut off from raft traffic"
        );
        Ok(d.as_millis() as u64)
    }

    /// End a site cut-off drill early.
    pub fn end_cut(&self) {
        self.faults().unpause();
    }

    /// Milliseconds left of this node's drill pause (0: none).
    pub fn drill_pause_left_ms(&self) -> u64 {
        self.faults().pause_left_ms()
    }

    /// On the target of a hand-over: wait until the lease this node granted
    /// the leader has run out, campaign, and say whether this node now leads.
    async fn timeout_now(&self, req: &TimeoutNow) -> TimeoutNowReply {
        let m = self.metrics();
        let refuse = |why: String| TimeoutNowReply {
            elected: false,
            term: m.current_term,
            reason: Some(why),
        };
        if !self.is_voter(&m) {
            return refuse("not a voter".into());
        }
        if m.current_leader != Some(req.leader) || m.current_term != req.term {
            return refuse(format!(
                "node {} at term {} is not the leader I follow (node {:?}, term {})",
                req.leader, req.term, m.current_leader, m.current_term
            ));
        }
        let limit = Duration::from_millis(req.limit_ms.min(HAND_OVER_LIMIT_MS_MAX));
        let started = Instant::now();
        // openraft's lease on every voter is `election_timeout_min_ms` from its
        // last message of the leader; one heartbeat more covers the other voter.
        let lease = Duration::from_millis(self.settings.election_timeout_min_ms + self.settings.heartbeat_interval_ms);
        while self.leader_contact_age() < lease {
            if started.elapsed() > limit {
                return refuse("the leader kept reaching this node".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let m = self.metrics();
        if m.current_term == req.term && m.state != ServerState::Leader {
            self.elections.elections_started.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                term = m.current_term + 1,
                leader = req.leader,
                "drill: taking over from the leader that asked"
            );
            if let Err(e) = self.raft.trigger().elect().await {
                return refuse(format!("could not start an election: {e}"));
            }
        }
        loop {
            let m = self.metrics();
            if m.state == ServerState::Leader {
                return TimeoutNowReply {
                    elected: true,
                    term: m.current_term,
                    reason: None,
                };
            }
            if m.current_leader.is_some_and(|l| l != self.id && l != req.leader) {
                return refuse(format!("node {:?} was elected instead", m.current_leader));
            }
            if started.elapsed() > limit {
                return refuse(format!("not elected within {} ms", limit.as_millis()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub(super) async fn rpc_timeout_now(
    State(n): Node,
    p: PeerExt,
    headers: HeaderMap,
    Json(req): Json<TimeoutNow>,
) -> Response {
    if let Err(r) = n.admit(peer(p), &headers, Rpc::TimeoutNow, Some(req.leader)) {
        return r;
    }
    Json(n.timeout_now(&req).await).into_response()
}
