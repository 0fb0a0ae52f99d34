//! Elections with a pre-vote and leader stickiness.
//!
//! openraft 0.9 has no pre-vote: a voter that misses heartbeats (a busy
//! machine, a slow link, a follower stuck behind a large append) raises its
//! term and campaigns. It cannot win if its log is behind, but its higher term
//! deposes the healthy leader the moment the leader next writes to it, and
//! the cluster stops committing. On a slow machine this becomes a storm that
//! outlives the load that started it.
//!
//! So openraft's own election timer is off (`enable_elect = false`) and this
//! driver decides when to campaign:
//! - a voter that has heard nothing from a leader for a randomised timeout
//!   first asks the other voters, without changing any term, whether they
//!   would vote for it (`/raft/prevote`);
//! - a voter grants that only if it has not itself heard from a leader within
//!   the minimum election timeout (leader stickiness: a leader that is alive
//!   for a majority stays), and the asker's log is at least as up to date as
//!   its own (a lagging node can never win, so it must not campaign);
//! - only with a majority of grants does the node call openraft's election,
//!   which raises the term.
//!
//! A real vote still passes openraft's own checks (its leader lease and log
//! comparison), so this only ever removes elections; safety stays openraft's.
//!
//! Architecture invariant: the grant rule is a pure function of what the
//! voter knows ([`VoterView`]) and the request, tested with data tables.

use crate::types::{LogId, NodeId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Asked of every other voter before a campaign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The candidate's current term (it would campaign at the next one).
    pub term: u64,
    pub last_log_id: Option<LogId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteReply {
    pub granted: bool,
    pub term: u64,
    /// Why it was refused, for the log.
    pub reason: Option<String>,
}

/// What a voter knows when it is asked for a pre-vote.
#[derive(Debug, Clone)]
pub struct VoterView {
    pub is_voter: bool,
    pub is_leader: bool,
    /// On a leader: how long since a quorum acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// On a follower: how long since a leader of the current (or a later) term
    /// last reached it; `None` if never since start.
    pub millis_since_leader_contact: Option<u64>,
    pub last_log_id: Option<LogId>,
}

/// Grant (Ok) or refuse (Err, with the reason) a pre-vote.
pub fn decide_prevote(view: &VoterView, req: &PreVoteRequest, election_min_ms: u64) -> Result<(), String> {
    if !view.is_voter {
        return Err("not a voter".into());
    }
    if view.is_leader {
        match view.millis_since_quorum_ack {
            Some(ms) if ms < election_min_ms => {
                return Err(format!("I lead, and a quorum acknowledged me {ms} ms ago"));
            }
            _ => {}
        }
    } else if let Some(ms) = view.millis_since_leader_contact {
        if ms < election_min_ms {
            return Err(format!("I heard from the leader {ms} ms ago"));
        }
    }
    if req.last_log_id < view.last_log_id {
        return Err(format!(
            "the candidate's log ends at {} but mine at {}",
            show(&req.last_log_id),
            show(&view.last_log_id)
        ));
    }
    Ok(())
}

fn show(l: &Option<LogId>) -> String {
    match l {
        Some(l) => format!("{}-{}", l.leader_id.term, l.index),
        None => "nothing".into(),
    }
}

/// Counters of one node's elections (served on `/raft/status` and in metrics).
#[derive(Debug, Default)]
pub struct ElectionStats {
    /// Pre-votes this node ran because it had not heard from a leader.
    pub prevotes_started: AtomicU64,
    /// Of those, refused by a majority: elections that would have disrupted the cluster.
    pub prevotes_lost: AtomicU64,
    /// Elections (term increases) this node started after winning a pre-vote.
    pub elections_started: AtomicU64,
    /// Times this node stopped leading while it kept running: a leader change
    /// with no crash behind it (a cut-off or starved leader, or a needless election).
    pub leaderships_lost: AtomicU64,
}

/// A snapshot of [`ElectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionCounts {
    pub prevotes_started: u64,
    pub prevotes_lost: u64,
    pub elections_started: u64,
    pub leaderships_lost: u64,
}

impl ElectionStats {
    pub fn counts(&self) -> ElectionCounts {
        ElectionCounts {
            prevotes_started: self.prevotes_started.load(Ordering::Relaxed),
            prevotes_lost: self.prevotes_lost.load(Ordering::Relaxed),
            elections_started: self.elections_started.load(Ordering::Relaxed),
            leaderships_lost: self.leaderships_lost.load(Ordering::Relaxed),
        }
    }
}

/// How long a voter waits for a silent leader: the election timeout's
/// minimum, stretched on a machine or link that has recently been slow.
///
/// A fixed minimum is either short (failover in under a second) or safe on a
/// starved machine, never both: on a CPU-starved VM a live leader's messages
/// arrive 400 to 600 ms apart, and a 400 ms minimum deposes it over and over
/// (a storm of 28 elections on a reviewer's 2-core machine). So each node
/// keeps the silences it lived through while a leader was alive (the gaps
/// between one leader's messages, and stalls in which this node itself was
/// not scheduled) and waits at least twice the [`PATIENCE_RANK`]-th longest of
/// the last [`PATIENCE_WINDOW_MS`], within `[base, PATIENCE_STRETCH_MAX x base]`.
/// - Slowness that repeats stretches it; one long gap (a cut link that
///   healed, one paused process) does not.
/// - Healthy gaps (a heartbeat every 100 ms) leave the base untouched, so a
///   healthy cluster fails over as fast as before.
/// - No warm-up: a node that has not yet lived through a slow gap waits
///   the base. A warm-up after each new leader (twice the base for its first
///   20 messages) was tried: it slowed 9 of 20 back-to-back failovers in
///   `hale bench failover` to 0.86 s, and a starved machine's first long
///   silence can come later than any warm-up that short.
/// - It only ever lengthens the wait: openraft's own lease and the pre-vote
///   rules still hold, so safety is unchanged; failover on a slow machine
///   takes longer, which is the price of not deposing live leaders there.
///
/// Pure (the caller passes the time): tested with data tables.
#[derive(Debug, Clone, Default)]
pub struct Patience {
    /// `(when, silence)` in ms, oldest first; only silences that could
    /// stretch the minimum (at least half the base) are kept.
    gaps: std::collections::VecDeque<(u64, u64)>,
}

/// Silences older than this no longer count.
pub const PATIENCE_WINDOW_MS: u64 = 60_000;
/// The how-many-th longest silence of the window sets the wait (1 = the longest).
pub const PATIENCE_RANK: usize = 3;
/// The wait never grows past this multiple of the configured minimum.
pub const PATIENCE_STRETCH_MAX: u64 = 8;
/// Most silences kept (the oldest go first).
pub const PATIENCE_SAMPLES_MAX: usize = 256;

impl Patience {
    /// A silence of `gap_ms` ended at `now_ms` (any monotonic origin).
    pub fn observe(&mut self, now_ms: u64, gap_ms: u64, base_min_ms: u64) {
        if gap_ms * 2 < base_min_ms {
            return;
        }
        self.forget_before(now_ms);
        if self.gaps.len() == PATIENCE_SAMPLES_MAX {
            self.gaps.pop_front();
        }
        self.gaps.push_back((now_ms, gap_ms));
        debug_assert!(self.gaps.len() <= PATIENCE_SAMPLES_MAX);
    }

    /// The minimum election timeout at `now_ms` for a configured `base_min_ms`.
    pub fn election_min_ms(&mut self, now_ms: u64, base_min_ms: u64) -> u64 {
        self.forget_before(now_ms);
        let mut recent: Vec<u64> = self.gaps.iter().map(|(_, g)| *g).collect();
        if recent.len() < PATIENCE_RANK {
            return base_min_ms;
        }
        recent.sort_unstable_by(|a, b| b.cmp(a));
        let ranked = recent[PATIENCE_RANK - 1];
        (2 * ranked).clamp(base_min_ms, PATIENCE_STRETCH_MAX * base_min_ms)
    }

    fn forget_before(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(PATIENCE_WINDOW_MS);
        while self.gaps.front().is_some_and(|(at, _)| *at < horizon) {
            self.gaps.pop_front();
        }
    }
}

/// A small seeded generator for election timeouts (xorshift64*).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    /// Uniform in `[min, max]`.
    pub fn between(&mut self, min: u64, max: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        min + r % (max.saturating_sub(min) + 1)
    }
}

/// A leader of a term, as one node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    pub term: u64,
    pub node: NodeId,
}

/// The one INFO line a node logs when it learns of a new leader: who leads
/// which term, and how long this node went without hearing any leader (from
/// the last message of the previous one, or from its start). A change from
/// one leader to another is a failover.
pub fn leader_line(previous: Option<Leadership>, new: Leadership, leaderless_ms: u64) -> String {
    let head = format!(
        "node {} leads term {} after {leaderless_ms} ms without a leader",
        new.node, new.term
    );
    match previous {
        None => format!("{head} (the first leader this node has seen since it started)"),
        Some(p) if p.node == new.node => format!("{head} (re-elected; it led term {} before)", p.term),
        Some(p) => format!("failover: {head} (node {} led term {})", p.node, p.term),
    }
}

/// Voters and learners of a (uniform) membership.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl std::fmt::Display for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |ids: &[NodeId]| {
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            }
        };
        write!(f, "voters {}; learners {}", list(&self.voters), list(&self.learners))
    }
}

/// The INFO line for a membership a node has just seen take effect; `took_ms`
/// when the node saw the change start (the joint configuration of a voter change).
pub fn membership_line(previous: Option<&Members>, new: &Members, log_index: u64, took_ms: Option<u64>) -> String {
    let mut line = format!("membership: {new} (log index {log_index}");
    if let Some(p) = previous {
        line.push_str(&format!("; was {p}"));
    }
    if let Some(ms) = took_ms {
        line.push_str(&format!("; took {ms} ms"));
    }
    line.push(')');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(contact: Option<u64>, last: Option<LogId>) -> VoterView {
        VoterView {
            is_voter: true,
            is_leader: false,
            millis_since_quorum_ack: None,
            millis_since_leader_contact: contact,
            last_log_id: last,
        }
    }

    fn ask(last: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 3,
            term: 7,
            last_log_id: last,
        }
    }

    /// (voter's view, candidate's last log) -> granted?
    fn check(view: VoterView, candidate_last: Option<LogId>, expect: bool) {
        let got = decide_prevote(&view, &ask(candidate_last), 400);
        assert_eq!(got.is_ok(), expect, "{view:?} asked by {candidate_last:?}: {got:?}");
    }

    #[test]
    fn prevote_rules() {
        // A voter that hears the leader refuses, whatever the candidate's log.
        check(follower(Some(50), log(2, 10)), log(2, 10), false);
        check(follower(Some(399), log(2, 10)), log(9, 99), false);
        // A voter that has not heard from a leader grants an up-to-date candidate.
        check(follower(Some(400), log(2, 10)), log(2, 10), true);
        check(follower(None, log(2, 10)), log(2, 11), true);
        check(follower(None, None), None, true);
        // ... but never a candidate whose log is behind (the stale disruptor).
        check(follower(Some(5_000), log(2, 10)), log(2, 9), false);
        check(follower(Some(5_000), log(3, 5)), log(2, 50), false);
        check(follower(None, log(1, 1)), None, false);
        // A later term beats a longer log.
        check(follower(None, log(2, 50)), log(3, 5), true);
        // A leader with a live quorum refuses; one cut off from it grants.
        let leader = |ack| VoterView {
            is_voter: true,
            is_leader: true,
            millis_since_quorum_ack: ack,
            millis_since_leader_contact: None,
            last_log_id: log(2, 10),
        };
        check(leader(Some(30)), log(2, 10), false);
        check(leader(Some(2_000)), log(2, 10), true);
        check(leader(None), log(2, 10), true);
        // Learners do not vote.
        let mut learner = follower(None, None);
        learner.is_voter = false;
        check(learner, log(2, 10), false);
    }

    /// (silences as (at_ms, gap_ms), asked at ms) -> minimum election timeout, base 400.
    fn patience(gaps: &[(u64, u64)], now_ms: u64, expect: u64) {
        let mut p = Patience::default();
        for (at, gap) in gaps {
            p.observe(*at, *gap, 400);
        }
        assert_eq!(p.election_min_ms(now_ms, 400), expect, "{gaps:?} at {now_ms}");
    }

    #[test]
    fn patience_stretches_only_for_repeated_slowness() {
        // Healthy heartbeats, and nothing at all: the base.
        patience(&[], 1_000, 400);
        patience(&[(100, 100), (200, 110), (300, 150), (400, 199)], 500, 400);
        // One or two long silences (a healed cut, a paused process) do not stretch it.
        patience(&[(1_000, 3_000)], 2_000, 400);
        patience(&[(1_000, 3_000), (5_000, 2_000), (6_000, 150)], 7_000, 400);
        // Repeated slowness does: twice the third-longest silence.
        patience(&[(1_000, 450), (2_000, 520), (3_000, 480)], 4_000, 900);
        patience(&[(1_000, 3_000), (2_000, 520), (3_000, 480), (4_000, 300)], 5_000, 960);
        // Below half the base nothing is kept, and it never goes below the base.
        patience(&[(1_000, 199), (2_000, 150), (3_000, 120)], 4_000, 400);
        patience(&[(1_000, 210), (2_000, 205), (3_000, 205)], 4_000, 410);
        // Bounded by 8 x base.
        patience(&[(1_000, 9_000), (2_000, 9_000), (3_000, 9_000)], 4_000, 3_200);
        // A minute later it is forgotten.
        patience(&[(1_000, 450), (2_000, 520), (3_000, 480)], 61_500, 400);
        patience(&[(1_000, 450), (2_000, 520), (3_000, 480), (62_000, 500)], 62_000, 960);
        patience(&[(1_000, 450), (2_000, 520), (3_000, 480), (62_000, 500)], 63_500, 400);
    }

    #[test]
    fn patience_keeps_a_bounded_number_of_silences() {
        let mut p = Patience::default();
        for i in 0..10_000u64 {
            p.observe(i, 250 + i % 7, 400);
        }
        assert_eq!(p.gaps.len(), PATIENCE_SAMPLES_MAX);
        assert_eq!(p.election_min_ms(10_000, 400), 512);
    }

    #[test]
    fn jitter_stays_in_range_and_repeats() {
        let mut a = Jitter::new(1);
        let mut b = Jitter::new(1);
        for _ in 0..1_000 {
            let x = a.between(400, 800);
            assert!((400..=800).contains(&x));
            assert_eq!(x, b.between(400, 800));
        }
        assert_eq!(Jitter::new(5).between(3, 3), 3);
    }

    #[test]
    fn change_lines_name_leader_term_and_time() {
        let one = Leadership { term: 6, node: 1 };
        let two = Leadership { term: 7, node: 2 };
        assert_eq!(
            leader_line(Some(one), two, 412),
            "failover: node 2 leads term 7 after 412 ms without a leader (node 1 led term 6)"
        );
        assert_eq!(
            leader_line(None, one, 5),
            "node 1 leads term 6 after 5 ms without a leader (the first leader this node has seen since it started)"
        );
        assert!(leader_line(Some(one), Leadership { term: 8, node: 1 }, 30).contains("re-elected"));
        let before = Members {
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        let after = Members {
            voters: vec![1, 2, 3],
            learners: vec![4],
        };
        assert_eq!(
            membership_line(Some(&before), &after, 12, Some(35)),
            "membership: voters 1, 2, 3; learners 4 (log index 12; was voters 1, 2, 3; learners none; took 35 ms)"
        );
        assert_eq!(
            membership_line(None, &before, 3, None),
            "membership: voters 1, 2, 3; learners none (log index 3)"
        );
    }
}
