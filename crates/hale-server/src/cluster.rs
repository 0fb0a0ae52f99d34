//! Cluster administration over the API port: status and membership changes.
//! Admin (or service) tokens only. A membership change sent to a node that
//! does not lead answers 421 with the leader's API URL in `X-Hale-Leader`,
//! so `hale cluster` can follow it.

use crate::config::Role;
use crate::wire::FhirError;
use crate::App;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hale_fhir::IssueCode;
use hale_raft::node::AdminError;
use hale_raft::HaleNode;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/cluster/status", get(status))
        .route("/cluster/init", post(init))
        .route("/cluster/learners", post(add_learner))
        .route("/cluster/promote", post(promote))
        .route("/cluster/remove", post(remove))
}

pub(crate) async fn admin(app: &App, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let p = app
        .auth
        .authenticate(headers)
        .await
        .map_err(|e| Box::new(e.into_response()))?;
    match p.role {
        Role::Admin | Role::Service => Ok(()),
        _ => Err(Box::new(
            FhirError::new(
                StatusCode::FORBIDDEN,
                IssueCode::Forbidden,
                "cluster administration needs an admin or service token",
            )
            .into_response(),
        )),
    }
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::NotLeader { ref leader_api, .. } => {
            let mut r =
                FhirError::new(StatusCode::MISDIRECTED_REQUEST, IssueCode::Processing, e.to_string()).into_response();
            if let Ok(v) = HeaderValue::from_str(leader_api) {
                r.headers_mut().insert("x-hale-leader", v);
            }
            r
        }
        AdminError::NoLeader => FhirError::unavailable(e.to_string()).into_response(),
        AdminError::Refused(msg) => FhirError::new(StatusCode::CONFLICT, IssueCode::Conflict, msg).into_response(),
    }
}

async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    Json(app.raft.cluster_status().await).into_response()
}

async fn init(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    match app.raft.init().await {
        Ok(()) => Json(serde_json::json!({"initialized": app.raft.id})).into_response(),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerReq {
    node_id: u64,
    raft_addr: String,
    api_url: String,
    site: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeReq {
    node_id: u64,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(
            FhirError::bad_request(format!("the request body is not what this endpoint takes: {e}")).into_response(),
        )
    })
}

async fn add_learner(State(app): State<Arc<App>>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let req: LearnerReq = match body(&bytes) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let node = HaleNode {
        raft_addr: req.raft_addr,
        api_url: req.api_url,
        site: req.site,
    };
    match app.raft.add_learner(req.node_id, node).await {
        Ok(()) => Json(serde_json::json!({"learner": req.node_id})).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn promote(State(app): State<Arc<App>>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let req: NodeReq = match body(&bytes) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match app.raft.promote(req.node_id).await {
        Ok(()) => Json(serde_json::json!({"voter": req.node_id})).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn remove(State(app): State<Arc<App>>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let req: NodeReq = match body(&bytes) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match app.raft.remove(req.node_id).await {
        Ok(()) => Json(serde_json::json!({"removed": req.node_id})).into_response(),
        Err(e) => admin_error(e),
    }
}
