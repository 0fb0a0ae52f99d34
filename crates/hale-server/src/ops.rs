//! Operations endpoints: `GET /ops/status`, one JSON document an operator (or
//! `hale doctor`, or a monitoring probe) reads to see how this node stands.
//!
//! Each concern contributes its own section (`backup`, `admission`, ...) from
//! its own module; this module only assembles them and checks the caller is an
//! admin. Architecture Invariant: nothing here changes state; it only reports.

use crate::cluster::admin;
use crate::App;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/ops/status", get(status))
}

/// The status document: always `node`, `raft`, then each section.
pub fn status_json(app: &App) -> Value {
    let m = app.raft.metrics();
    let mut doc = Map::new();
    doc.insert("node".into(), json!(app.raft.id));
    doc.insert(
        "raft".into(),
        json!({
            "term": m.current_term,
            "leader": m.current_leader,
            "appliedIndex": app.proposer.last_applied(),
        }),
    );
    doc.insert("admission".into(), crate::admission::status_section(app));
    doc.insert("backup".into(), crate::backup::status_section(app));
    doc.insert("drills".into(), crate::drill::status_section(app));
    Value::Object(doc)
}

async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    Json(status_json(&app)).into_response()
}
