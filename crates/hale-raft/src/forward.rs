//! Who a forwarded write comes from, and what the leader checks before it
//! appends one.
//!
//! A node that is not the leader sends the whole command to the leader on
//! `/raft/propose` with its [`Origin`]: the user's own credential (the
//! `Authorization` header as the node received it), a web-UI session of a
//! local account, or the node itself (read-audit batches, journal replay,
//! the demo loader, the delivery worker). The leader does not take the
//! command's `actor` on trust: it re-authenticates a user origin with its
//! own authenticator ([`UserCheck`], installed by the server) and refuses a
//! command whose actor differs, and it binds node-made commands to the
//! sender's certificate ([`check_forwarded`]). A refused command is never
//! appended.
//!
//! The origin travels in a task-local set around each API request
//! ([`with_origin`]), so the write path does not pass it by hand.

use crate::peer_tls::Peer;
use hale_store::command::{Command, CommandKind};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Where a command came from, as the forwarding node tells the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// An API request: its `Authorization` header as received (none: there
    /// was none, which only an open-access leader accepts).
    Request { authorization: Option<String> },
    /// The web UI of the forwarding node, for a signed-in local account.
    /// Sessions are node-local: the leader checks the account, not a credential.
    Session { user: String, role: String },
    /// The node itself: audit batches, journal replay, demo load, delivery worker.
    Node,
}

tokio::task_local! {
    static ORIGIN: Origin;
}

/// Run `f` (an API request) with `origin` as the origin of what it proposes.
pub async fn with_origin<F: Future>(origin: Origin, f: F) -> F::Output {
    ORIGIN.scope(origin, f).await
}

/// The origin of a command proposed now: node-made kinds are always the
/// node's own, even when a request triggered them (`/sync/resend`); other
/// commands take the request's origin, or the node's outside any request.
pub fn origin_of(cmd: &Command) -> Origin {
    if node_made(&cmd.kind) {
        return Origin::Node;
    }
    ORIGIN.try_with(|o| o.clone()).unwrap_or(Origin::Node)
}

fn node_made(kind: &CommandKind) -> bool {
    matches!(
        kind,
        CommandKind::AuditOnce { .. } | CommandKind::Replay(_) | CommandKind::Audit(_)
    )
}

/// The body of `/raft/propose`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub cmd: Command,
    pub origin: Origin,
}

/// A check in flight.
pub type CheckFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The leader's check of a user origin, with its own authenticator and
/// accounts (the server implements it; raft knows no users).
pub trait UserCheck: Send + Sync {
    /// `Ok` when the credential in `origin` authenticates here as exactly
    /// `cmd.actor` and that user may propose a command of this kind (and,
    /// for what it writes, see those patients: `peer` is the forwarding node
    /// as its certificate proves it, whose site stands in for a user who has
    /// none of their own); otherwise why not.
    fn check<'a>(&'a self, cmd: &'a Command, origin: &'a Origin, peer: Option<Peer>) -> CheckFuture<'a>;
}

/// The role every node-made command carries.
pub const NODE_ROLE: &str = "service";

/// Decide whether the leader appends a forwarded command. `peer` is the
/// sender as its certificate proves it (none without mTLS).
pub async fn check_forwarded(
    cmd: &Command,
    origin: &Origin,
    peer: Option<Peer>,
    users: Option<&dyn UserCheck>,
) -> Result<(), String> {
    if let CommandKind::Part(_) = cmd.kind {
        return Err("a forwarding node sends whole commands (the leader splits them); a part is refused".into());
    }
    if peer == Some(Peer::Operator) {
        return Err("an operator certificate cannot propose writes".into());
    }
    match origin {
        Origin::Node => {
            if cmd.actor.role != NODE_ROLE {
                return Err(format!(
                    "a node's own command acts as a service, not as user '{}' with role '{}'; a user's write must carry the user's credential",
                    cmd.actor.user, cmd.actor.role
                ));
            }
            match peer {
                // Without mTLS there is no peer identity to bind to (the
                // cluster secret is all there is); a voter certificate can
                // lead the cluster anyway, so it gains nothing by forwarding.
                None | Some(Peer::Node { voter: true, .. }) => Ok(()),
                Some(Peer::Node { id, voter: false }) => match &cmd.kind {
                    CommandKind::AuditOnce { node, .. } if *node == id => Ok(()),
                    CommandKind::Replay(entries) if entries.iter().all(|e| e.node == id) => Ok(()),
                    CommandKind::AuditOnce { node, .. } => Err(format!(
                        "node {id} sent an audit batch in node {node}'s name"
                    )),
                    CommandKind::Replay(_) => Err(format!(
                        "node {id} sent journal entries of another node"
                    )),
                    _ => Err(format!(
                        "a learner certificate (node {id}) may send as itself only its own audit batches and journal replay; other writes need the user's credential"
                    )),
                },
                Some(Peer::Operator) => unreachable!("refused above"),
            }
        }
        Origin::Request { .. } | Origin::Session { .. } => {
            if node_made(&cmd.kind) {
                return Err("audit batches and journal replay are a node's own commands, not a user's".into());
            }
            match users {
                Some(u) => u.check(cmd, origin, peer).await,
                None => Err("this node cannot check a forwarded user's credential".into()),
            }
        }
    }
}
