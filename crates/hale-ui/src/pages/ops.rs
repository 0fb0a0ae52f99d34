//! Operations status (admin): cluster members with role, site, lag and last
//! contact; this node's journal; sessions.

use super::render;
use crate::chrome::{uk_hm, Chrome};
use crate::{error_page, signed_in, UiState};
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hale_server::config::Role;

pub struct Member {
    pub id: u64,
    pub role: String,
    pub site: String,
    pub reachable: bool,
    pub state: String,
    pub lag: String,
    pub contact: String,
    pub elections: String,
    pub lost: String,
}

#[derive(Template)]
#[template(path = "ops.html")]
struct Ops {
    c: Chrome,
    answered_by: u64,
    at: String,
    leader: String,
    term: u64,
    members: Vec<Member>,
    journal: Vec<(String, String)>,
    packs: Vec<(String, String)>,
    sessions: i64,
}

pub async fn page(State(ui): UiState, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if s.principal.role != Role::Admin {
        return error_page(&ui, StatusCode::FORBIDDEN, "Operations status needs the admin role.");
    }
    let cs = ui.app.raft.cluster_status().await;
    let members = cs
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            role: m.role.clone(),
            site: m.site.clone(),
            reachable: m.reachable,
            state: m.state.clone().unwrap_or_default(),
            lag: m.lag_entries.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
            contact: match m.last_heard_ms {
                Some(0) => "this node".into(),
                Some(ms) if ms < 2_000 => format!("{ms} ms ago"),
                Some(ms) => format!("{} s ago", ms / 1000),
                None => "never".into(),
            },
            elections: m
                .elections
                .as_ref()
                .map(|e| e.elections_started.to_string())
                .unwrap_or_default(),
            lost: m
                .elections
                .as_ref()
                .map(|e| e.leaderships_lost.to_string())
                .unwrap_or_default(),
        })
        .collect();
    let journal = match hale_server::offline::status_json(&ui.app) {
        Ok(v) => v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| {
                [
                    "site",
                    "cutOff",
                    "pending",
                    "oldestPendingAgeMs",
                    "committed",
                    "tasks",
                    "refused",
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        Err(e) => vec![("error".into(), e)],
    };
    let now = hale_server::now_ms();
    let packs = ui
        .app
        .downtime
        .snapshot(now)
        .into_iter()
        .map(|p| {
            let age = match p.age_s {
                Some(a) if a < 120 => format!("{a} s old"),
                Some(a) => format!("{} min old", a / 60),
                None => "none made yet".into(),
            };
            let err = p
                .last_error
                .map(|e| format!("; last attempt failed: {e}"))
                .unwrap_or_default();
            (p.site, format!("{age}{err}"))
        })
        .collect();
    render(&Ops {
        packs,
        c: Chrome::new(&ui, &s, "Operations status", "ops"),
        answered_by: cs.answered_by,
        at: uk_hm(hale_server::now_ms()),
        leader: cs.leader.map(|l| format!("node {l}")).unwrap_or_else(|| "none".into()),
        term: cs.term,
        members,
        journal,
        sessions: ui.sessions.live(hale_server::now_ms()).unwrap_or(0),
    })
}
