//! The UI's FHIR client: requests served in-process by the same handler a
//! network client reaches, as the signed-in user. Authorisation, the read
//! barrier, read audit and the site journal all apply unchanged.
//!
//! Architecture invariant: the UI never reads or writes the store directly
//! for patient data; every patient-data access goes through here, so every
//! view of a record leaves an AuditEvent exactly as an API read does.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use hale_server::auth::{Principal, IN_PROCESS_HEADER};
use hale_server::App;
use serde_json::Value;
use std::sync::Arc;

/// Largest FHIR response the UI reads into memory.
pub const RESPONSE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// One FHIR answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The first issue's diagnostics of an OperationOutcome, or the status.
    pub fn problem(&self) -> String {
        self.body["issue"][0]["diagnostics"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered {}", self.status))
    }

    /// Saved at this site's journal, not yet at the data centres.
    pub fn pending(&self) -> bool {
        self.headers.get("x-hale-sync").is_some_and(|v| v == "pending")
    }

    /// Bundle entries' resources: matches and includes, never the
    /// OperationOutcome a search adds about itself.
    pub fn entries(&self) -> Vec<&Value> {
        self.body["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["search"]["mode"] != "outcome")
                    .map(|e| &e["resource"])
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Search parameters the server ignored (a warning in the Bundle): a
    /// UI query that names one is a bug, so it is logged.
    pub fn ignored(&self) -> Vec<String> {
        self.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "outcome")
            .flat_map(|e| e["resource"]["issue"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["diagnostics"].as_str().map(str::to_string))
            .collect()
    }

    /// How current the data is: the consistency the node could give.
    pub fn consistency(&self) -> Freshness {
        let h = |k: &str| self.headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        Freshness {
            consistency: h("x-hale-consistency").unwrap_or_else(|| "unknown".into()),
            staleness_ms: h("x-hale-staleness-ms").and_then(|v| v.parse().ok()),
        }
    }
}

/// What a read could promise about its data.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// `linearizable`, `leader-lease`, `bounded`, `stale`, …
    pub consistency: String,
    pub staleness_ms: Option<u64>,
}

pub struct Client {
    pub app: Arc<App>,
    pub principal: Principal,
    /// A session from the identity provider: its access token, sent as
    /// `Authorization: Bearer` instead of the in-process header, so the API
    /// authenticates the user (role, site, SMART scopes) from the token and
    /// a write forwarded to the leader carries it.
    pub bearer: Option<String>,
}

impl Client {
    pub async fn get(&self, path_and_query: &str) -> Answer {
        self.send(Method::GET, path_and_query, None, None).await
    }

    /// A write; `if_match` is the version the user saw. Every UI write may go
    /// to the site journal when the node is cut off (`X-Hale-Offline: accept`).
    pub async fn write(&self, method: Method, path: &str, body: &Value, if_match: Option<&str>) -> Answer {
        self.send(method, path, Some(body), if_match).await
    }

    async fn send(&self, method: Method, uri: &str, body: Option<&Value>, if_match: Option<&str>) -> Answer {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::ACCEPT, "application/fhir+json");
        b = match &self.bearer {
            Some(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
            None => b.header(IN_PROCESS_HEADER, self.app.auth.in_process_value(&self.principal)),
        };
        if method != Method::GET {
            b = b
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header("x-hale-offline", "accept");
            if let Some(v) = if_match {
                b = b.header(header::IF_MATCH, format!("W/\"{v}\""));
            }
        }
        let body = match body {
            Some(v) => Body::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Body::empty(),
        };
        let req = match b.body(body) {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    status: StatusCode::BAD_REQUEST,
                    headers: HeaderMap::new(),
                    body: serde_json::json!({"issue": [{"diagnostics": format!("bad request {uri}: {e}")}]}),
                }
            }
        };
        let resp = hale_server::handle_in_process(self.app.clone(), req).await;
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, RESPONSE_BYTES_MAX).await.unwrap_or_default();
        let a = Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        for why in a.ignored() {
            tracing::warn!(%uri, why, "the web UI sent a search the server did not fully honour");
        }
        a
    }
}
