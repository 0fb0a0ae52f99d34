//! FHIR JSON on the wire: content types, headers, OperationOutcome errors,
//! and Bundles assembled around stored JSON without re-parsing it.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hale_fhir::outcome::operation_outcome;
use hale_fhir::{Issue, IssueCode};
use hale_store::query::Found;
use hale_store::{RejectKind, Rejection};
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// An error answered with an OperationOutcome.
#[derive(Debug, Clone)]
pub struct FhirError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
}

impl FhirError {
    pub fn new(status: StatusCode, code: IssueCode, msg: impl Into<String>) -> FhirError {
        FhirError {
            status,
            issues: vec![Issue::error(code, msg)],
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> FhirError {
        if let Some(i) = self.issues.first_mut() {
            i.expression = Some(expression.into());
        }
        self
    }

    pub fn bad_request(msg: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, msg)
    }

    pub fn not_found(msg: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::NOT_FOUND, IssueCode::NotFound, msg)
    }

    pub fn internal(msg: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, msg)
    }

    pub fn unavailable(msg: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::SERVICE_UNAVAILABLE, IssueCode::Transient, msg)
    }

    pub fn invalid(issues: Vec<Issue>) -> FhirError {
        FhirError {
            status: StatusCode::BAD_REQUEST,
            issues,
        }
    }

    pub fn from_rejection(r: Rejection) -> FhirError {
        FhirError {
            status: reject_status(r.kind),
            issues: r.issues,
        }
    }

    pub fn outcome_json(&self) -> Value {
        operation_outcome(&self.issues)
    }
}

pub fn reject_status(kind: RejectKind) -> StatusCode {
    match kind {
        RejectKind::Invalid => StatusCode::BAD_REQUEST,
        RejectKind::Forbidden => StatusCode::FORBIDDEN,
        RejectKind::NotFound => StatusCode::NOT_FOUND,
        RejectKind::Conflict => StatusCode::CONFLICT,
        RejectKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        RejectKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = self.outcome_json().to_string();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            // A token that was sent but is unusable (RFC 6750 §3.1) versus none at all.
            let invalid = self.issues.iter().any(|i| i.code == IssueCode::Security);
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(if invalid {
                    "Bearer realm=\"hale\", error=\"invalid_token\""
                } else {
                    "Bearer realm=\"hale\""
                }),
            );
        }
        resp
    }
}

impl From<hale_store::StoreError> for FhirError {
    fn from(e: hale_store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        FhirError::internal(format!("storage error: {e}"))
    }
}

impl From<hale_store::rusqlite::Error> for FhirError {
    fn from(e: hale_store::rusqlite::Error) -> Self {
        FhirError::from(hale_store::StoreError::from(e))
    }
}

pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("W/\"{version}\"")).expect("ascii")
}

pub fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Add ETag and Last-Modified for one resource version.
pub fn version_headers(headers: &mut HeaderMap, version: u64, updated_ms: i64) {
    headers.insert(header::ETAG, etag(version));
    if let Ok(v) = HeaderValue::from_str(&http_date(updated_ms)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
}

/// Parse `W/"3"` or `"3"` or `3`.
pub fn parse_etag(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"').parse().ok()
}

pub fn instant(ms: i64) -> String {
    hale_fhir::date::format_instant_ms(ms)
}

/// Builds a Bundle as text, splicing stored resource JSON in verbatim.
pub struct BundleWriter {
    out: String,
    entries: usize,
}

impl BundleWriter {
    /// `head` holds the Bundle's own elements (type, total, link...) as a JSON object.
    pub fn new(head: Value) -> BundleWriter {
        let mut out = String::with_capacity(4096);
        let head = head.to_string();
        // Drop the closing brace; entries follow.
        out.push_str(&head[..head.len() - 1]);
        out.push_str(",\"entry\":[");
        BundleWriter { out, entries: 0 }
    }

    /// Append one entry: `fields` (fullUrl, search, request, response...) plus the raw resource.
    pub fn entry(&mut self, fields: Value, resource: Option<&str>) {
        if self.entries > 0 {
            self.out.push(',');
        }
        self.entries += 1;
        let f = fields.to_string();
        match resource {
            Some(r) => {
                self.out.push_str(&f[..f.len() - 1]);
                if f.len() > 2 {
                    self.out.push(',');
                }
                self.out.push_str("\"resource\":");
                self.out.push_str(r);
                self.out.push('}');
            }
            None => self.out.push_str(&f),
        }
    }

    pub fn finish(mut self) -> String {
        if self.entries == 0 {
            // FHIR forbids empty arrays: remove `,"entry":[`.
            let cut = self.out.len() - ",\"entry\":[".len();
            self.out.truncate(cut);
            self.out.push('}');
        } else {
            self.out.push_str("]}");
        }
        self.out
    }
}

/// `fullUrl` of a resource.
pub fn full_url(base: &str, f: &Found) -> String {
    format!("{base}/{}/{}", f.rtype, f.id)
}

/// A history Bundle entry for one version.
pub fn history_entry(base: &str, f: &Found) -> Value {
    let url = match f.method {
        "POST" => f.rtype.clone(),
        _ => format!("{}/{}", f.rtype, f.id),
    };
    let status = match f.method {
        "POST" => "201 Created",
        "DELETE" => "204 No Content",
        _ => "200 OK",
    };
    json!({
        "fullUrl": full_url(base, f),
        "request": {"method": f.method, "url": url},
        "response": {"status": status, "etag": format!("W/\"{}\"", f.version), "lastModified": instant(f.updated_ms)},
    })
}

/// 406 when the client asks only for XML (`Accept` or `_format`): Hale speaks
/// FHIR JSON. Accept headers that also allow JSON (or anything) are fine.
pub fn not_acceptable(headers: &HeaderMap, query: &str) -> Option<FhirError> {
    let xml = |t: &str| {
        let t = t.trim().to_ascii_lowercase();
        t == "xml" || t.ends_with("/xml") || t.ends_with("+xml")
    };
    let format = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.into_owned());
    let wants_xml = match format {
        Some(f) => xml(&f),
        None => {
            let accept = headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let types: Vec<&str> = accept
                .split(',')
                .map(|t| t.split(';').next().unwrap_or("").trim())
                .filter(|t| !t.is_empty())
                .collect();
            !types.is_empty() && types.iter().all(|t| xml(t))
        }
    };
    wants_xml.then(|| {
        FhirError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueCode::NotSupported,
            "this server speaks FHIR JSON only: ask for application/fhir+json (XML is not supported)",
        )
    })
}
