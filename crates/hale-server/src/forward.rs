//! The user behind a forwarded write.
//!
//! A node that is not the leader forwards each write to it (hale-raft
//! `/raft/propose`) with its origin ([`hale_raft::forward::Origin`]). This
//! module supplies both ends: [`origin_of_request`] captures the origin of an
//! API request (its `Authorization` header, or the web UI's signed-in local
//! account), and [`ForwardedUsers`] is the leader's check: it authenticates
//! the forwarded credential with this node's own [`Authenticator`], rebuilds
//! the actor from it and refuses a command whose actor differs, or whose
//! kind or resource types that user may not write. Nothing refused is appended.
//!
//! [`Authenticator`]: crate::auth::Authenticator

use crate::auth::{authorize_op, Principal, IN_PROCESS_HEADER};
use crate::config::Role;
use crate::App;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use hale_auth::Op;
use hale_fhir::ResourceType;
use hale_raft::forward::{CheckFuture, Origin, UserCheck};
use hale_raft::peer_tls::Peer;
use hale_store::command::{Command, CommandKind, WriteOp};
use std::str::FromStr;
use std::sync::{Arc, Weak};

/// The origin of what a request proposes: a web-UI request made in-process
/// for a signed-in account is that account's session; anything else
/// carries its `Authorization` header (none under open access).
pub async fn origin_of_request(app: &App, headers: &HeaderMap) -> Origin {
    if headers.contains_key(IN_PROCESS_HEADER) {
        if let Ok(p) = app.auth.authenticate(headers).await {
            return Origin::Session {
                user: p.user,
                role: p.role.as_str().into(),
            };
        }
    }
    Origin::Request {
        authorization: headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// Middleware: every request runs with its origin set, so a write it
/// proposes carries it to the leader.
pub async fn capture_origin(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let origin = origin_of_request(&app, req.headers()).await;
    hale_raft::forward::with_origin(origin, next.run(req)).await
}

/// The leader's check of forwarded users (installed on the raft node).
pub struct ForwardedUsers(pub Weak<App>);

impl UserCheck for ForwardedUsers {
    fn check<'a>(&'a self, cmd: &'a Command, origin: &'a Origin, peer: Option<Peer>) -> CheckFuture<'a> {
        Box::pin(self.check_now(cmd, origin, peer))
    }
}

impl ForwardedUsers {
    async fn check_now(&self, cmd: &Command, origin: &Origin, peer: Option<Peer>) -> Result<(), String> {
        let app = self.0.upgrade().ok_or("the server is stopping")?;
        let principal = match origin {
            Origin::Request { authorization } => {
                let mut headers = HeaderMap::new();
                if let Some(a) = authorization {
                    let v = a
                        .parse()
                        .map_err(|_| "the forwarded Authorization header is not a valid header value")?;
                    headers.insert(axum::http::header::AUTHORIZATION, v);
                }
                app.auth.authenticate(&headers).await.map_err(|e| {
                    format!(
                        "the forwarded credential does not authenticate on the leader: {}",
                        why(&e)
                    )
                })?
            }
            // A web-UI session lives on the node that signed the user in; the
            // leader holds the replicated accounts: the account must exist, be
            // enabled and have the role the session states.
            Origin::Session { user, role } => {
                let p = crate::accounts::active(&app, user)
                    .ok_or_else(|| format!("'{user}' is not an enabled local account on the leader"))?;
                if p.role.as_str() != role {
                    return Err(format!(
                        "the session states role '{role}' for '{user}', but the account has role '{}'",
                        p.role.as_str()
                    ));
                }
                p
            }
            Origin::Node => return Err("not a user origin".into()),
        };
        check_command(&principal, cmd)?;
        check_patients(&app, principal, cmd, peer).await
    }
}

/// Patient-level access, decided again on the leader: the forwarding node's
/// own decision is not taken on trust (a site replica could be compromised).
/// A user with a site of their own (token claim, account) is judged at it. A
/// user without one is judged at the sites the leader itself trusts: the site
/// of the forwarding node as its certificate proves it and the membership
/// records it (never what the node says), and the leader's own site rules
/// (`[access] site`, its own site); a relationship at either will do.
/// A break-glass episode started on the forwarding node a moment ago may not
/// have reached the leader's store yet (its start row travels in the next
/// read-audit batch, within milliseconds when connected), so a refusal is
/// decided once more after [`RECHECK_DELAY_MS`].
async fn check_patients(app: &App, principal: Principal, cmd: &Command, peer: Option<Peer>) -> Result<(), String> {
    let ops = match &cmd.kind {
        CommandKind::Write(op) => std::slice::from_ref(op),
        CommandKind::Transaction(ops) | CommandKind::Batch(ops) => ops.as_slice(),
        _ => return Ok(()),
    };
    let mut candidates: Vec<Principal> = vec![principal.clone()];
    if principal.site.is_none() {
        if let Some(Peer::Node { id, .. }) = peer {
            let m = app.raft.metrics();
            let site = m
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.site.clone())
                .filter(|s| !s.trim().is_empty() && s != "local");
            if let Some(site) = site {
                let mut p = principal.clone();
                p.site = Some(site);
                candidates.insert(0, p);
            }
        }
    }
    let decide = || -> Result<(), String> {
        let mut first_refusal = None;
        for p in &candidates {
            let headers = HeaderMap::new();
            let cx = crate::rest::Ctx {
                app,
                headers: &headers,
                principal: p,
                base: String::new(),
                gate: Default::default(),
            };
            match ops.iter().try_for_each(|op| cx.check_write(op)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        Err(format!(
            "patient-level access, checked again on the leader: {}",
            first_refusal.map(|e| why(&e)).unwrap_or_default()
        ))
    };
    if decide().is_ok() {
        return Ok(());
    }
    tokio::time::sleep(std::time::Duration::from_millis(RECHECK_DELAY_MS)).await;
    decide()
}

/// How long the leader waits before deciding a refused forwarded write again.
pub const RECHECK_DELAY_MS: u64 = 300;

fn why(e: &crate::wire::FhirError) -> String {
    e.issues
        .iter()
        .map(|i| i.diagnostics.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The command must act as `p`, and be a kind, types and interactions `p`
/// may write (its role and, for a SMART token, its granted scopes;
/// patient-level access is not re-checked here).
pub fn check_command(p: &Principal, cmd: &Command) -> Result<(), String> {
    let actor = p.actor();
    if cmd.actor != actor {
        return Err(format!(
            "the command acts as '{}' with role '{}', but its credential is '{}' with role '{}'",
            cmd.actor.user, cmd.actor.role, actor.user, actor.role
        ));
    }
    let ops = match &cmd.kind {
        CommandKind::Write(op) => std::slice::from_ref(op),
        CommandKind::Transaction(ops) | CommandKind::Batch(ops) => ops.as_slice(),
        CommandKind::Account(_) if p.role == Role::Admin => return Ok(()),
        CommandKind::Account(_) => return Err(format!("'{}' may not change staff accounts", p.user)),
        _ => return Err("this kind of command is not a user's".into()),
    };
    for op in ops {
        let rt = ResourceType::from_str(op.rtype()).map_err(|_| format!("'{}' is not a resource type", op.rtype()))?;
        // The role and, for a SMART token, the scopes it was granted, per interaction.
        let interaction = match op {
            WriteOp::Create { .. } => Op::Create,
            WriteOp::Update { .. } => Op::Update,
            WriteOp::Delete { .. } => Op::Delete,
        };
        authorize_op(p, rt, interaction).map_err(|e| why(&e))?;
    }
    Ok(())
}
