//! Read consistency on the wire: the `X-Hale-Consistency` request header and
//! the headers that tell a client what a response reflects.
//!
//! | request header value | voter                                   | learner |
//! |----------------------|-----------------------------------------|---------|
//! | (none) / `default`   | linearizable; local marked `stale` when the cluster cannot confirm | local |
//! | `linearizable`       | linearizable or 503                     | linearizable (asks the leader) or 503 |
//! | `local`              | local                                   | local   |
//!
//! Every response carries `X-Hale-Node`, `X-Hale-Applied-Index` and, for
//! reads, `X-Hale-Consistency` and `X-Hale-Staleness-Ms` (an upper bound on
//! how far behind the leader the data may be; `unknown` when the node has
//! never heard from a leader).

use crate::wire::FhirError;
use crate::App;
use axum::http::{HeaderMap, HeaderValue, Method};
use hale_raft::{ReadInfo, ReadLevel};

pub const REQUEST_HEADER: &str = "x-hale-consistency";

pub fn requested(headers: &HeaderMap) -> Result<ReadLevel, FhirError> {
    let Some(v) = headers.get(REQUEST_HEADER) else {
        return Ok(ReadLevel::Default);
    };
    match v.to_str().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "" | "default" => Ok(ReadLevel::Default),
        "linearizable" | "strong" => Ok(ReadLevel::Linearizable),
        "local" | "stale-ok" => Ok(ReadLevel::Local),
        other => Err(FhirError::bad_request(format!(
            "X-Hale-Consistency '{other}' is not a consistency level; use linearizable, local or default"
        ))
        .at("X-Hale-Consistency")),
    }
}

/// Reads take the consistency barrier; writes are ordered by the log anyway.
pub fn is_read(method: &Method, path: &str) -> bool {
    *method == Method::GET || *method == Method::HEAD || (*method == Method::POST && path.ends_with("/_search"))
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

pub fn read_headers(info: &ReadInfo, headers: &mut HeaderMap) {
    set(headers, "x-hale-consistency", info.consistency.to_string());
    set(headers, "x-hale-applied-index", info.applied_index.to_string());
    set(
        headers,
        "x-hale-staleness-ms",
        info.staleness_ms
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into()),
    );
    if let Some(reason) = &info.reason {
        // Header values must be visible ASCII.
        let clean: String = reason
            .chars()
            .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { ' ' })
            .collect();
        set(headers, "x-hale-stale-reason", clean);
    }
}

pub fn write_headers(app: &App, headers: &mut HeaderMap) {
    set(headers, "x-hale-applied-index", app.raft.applied_index().to_string());
}

pub fn node_headers(app: &App, headers: &mut HeaderMap) {
    set(headers, "x-hale-node", app.raft.id.to_string());
}
