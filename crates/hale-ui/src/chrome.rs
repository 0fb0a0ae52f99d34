//! What every page carries: who is signed in, the navigation, the CSRF
//! token for its forms, and the degraded banner when this node cannot
//! confirm with the cluster.

use crate::{Signed, Ui};
use askama::Template;
use axum::http::StatusCode;
use hale_server::config::Role;

/// The banner shown on every page of a node that cannot confirm with the data centres.
#[derive(Debug, Clone)]
pub struct Degraded {
    /// "Cut off from the data centres."
    pub headline: String,
    /// UK local time of the last confirmed contact, `14:32`, or "not since this node started".
    pub as_of: String,
    /// Changes saved at this site, waiting to sync.
    pub pending: u64,
    pub reason: String,
}

pub struct Chrome {
    pub title: String,
    pub user: String,
    pub name: String,
    pub role: Role,
    pub csrf: String,
    pub nav: &'static str,
    pub degraded: Option<Degraded>,
    pub site: String,
    pub css_tag: &'static str,
}

impl Chrome {
    pub fn new(ui: &Ui, s: &Signed, title: impl Into<String>, nav: &'static str) -> Chrome {
        Chrome {
            title: title.into(),
            user: s.principal.user.clone(),
            name: s.name.clone(),
            role: s.principal.role,
            csrf: s.csrf.clone(),
            nav,
            degraded: degraded(ui),
            site: ui.app.cfg.cluster.site.clone(),
            css_tag: crate::assets::CSS_TAG,
        }
    }

    /// A page before sign-in.
    pub fn anonymous(ui: Option<&Ui>, title: &str) -> Chrome {
        Chrome {
            title: title.into(),
            user: String::new(),
            name: String::new(),
            role: Role::Clerk,
            csrf: String::new(),
            nav: "",
            degraded: ui.and_then(degraded),
            site: ui.map(|u| u.app.cfg.cluster.site.clone()).unwrap_or_default(),
            css_tag: crate::assets::CSS_TAG,
        }
    }

    pub fn signed_in(&self) -> bool {
        !self.user.is_empty()
    }

    pub fn admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// May see clinical resources (the API's rule: clerks may not).
    pub fn clinical(&self) -> bool {
        matches!(self.role, Role::Clinician | Role::Admin | Role::Service)
    }

    /// Reviews break-glass access and the audit trail.
    pub fn privacy(&self) -> bool {
        self.role == Role::PrivacyOfficer
    }

    pub fn role_name(&self) -> &'static str {
        self.role.as_str()
    }
}

/// UK local `HH:MM` of a time in ms.
pub fn uk_hm(t_ms: i64) -> String {
    hale_sched::uktime::to_uk_local(t_ms).format("%H:%M").to_string()
}

/// The banner's content, or None when the node is in touch with a quorum.
pub fn degraded(ui: &Ui) -> Option<Degraded> {
    let reason = ui.app.raft.cut_off()?;
    let now = hale_server::now_ms();
    let as_of = match ui.app.raft.node_status().millis_since_leader_contact {
        Some(ms) => uk_hm(now - ms as i64),
        None => "not since this server started".into(),
    };
    Some(Degraded {
        headline: "Cut off from the data centres.".into(),
        as_of,
        pending: ui.app.offline.pending(),
        reason,
    })
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    c: Chrome,
    status: u16,
    message: &'a str,
}

pub fn render_error(ui: Option<&Ui>, status: StatusCode, message: &str) -> String {
    let title = match status {
        StatusCode::FORBIDDEN => "You cannot do this",
        StatusCode::NOT_FOUND => "Page not found",
        s if s.is_server_error() => "Sorry, there is a problem with the service",
        _ => "There is a problem",
    };
    ErrorPage {
        c: Chrome::anonymous(ui, title),
        status: status.as_u16(),
        message,
    }
    .render()
    .unwrap_or_else(|e| format!("error: {e}"))
}
