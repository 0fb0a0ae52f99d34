//! A client for the GOV.UK Notify API (v2) and any service compatible with
//! it, and the [`NotifyAdapter`] that sends outbox items through it.
//!
//! - `POST /v2/notifications/sms`, `/email`, `/letter` (templated, or a
//!   precompiled PDF as base64 `content` with `postage`), each with
//!   `reference` = the outbox item's idempotency key.
//! - `GET /v2/notifications?reference=...&template_type=...` to find out,
//!   after a crash or a timeout, whether an earlier attempt got through.
//!   Notify keeps notifications for 7 days, so older attempts cannot be checked.
//! - Errors are Notify's `{"status_code": N, "errors": [{"error", "message"}]}`.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::{HeaderName, ACCEPT, AUTHORIZATION};
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::{Endpoint, HttpError, HttpResponse};
use crate::jwt::ApiKey;
use crate::letter::render_letter;
use crate::message::{personalisation, Sender};
use crate::model::{Channel, OutboxItem, Receipt};
use crate::outbox::{Adapter, BoxFuture, Check, Clock, SendError, SystemClock};
use hale_sched::letters::Postage;

/// GOV.UK Notify's production API.
pub const NOTIFY_BASE_URL: &str = "https://api.notifications.service.gov.uk";

/// Notify returns notifications up to 7 days old; an attempt older than this
/// cannot be looked up safely (6 days leaves a margin).
pub const LOOKUP_WINDOW_MS: i64 = 6 * 24 * 3600 * 1000;

/// How to reach Notify.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// E.g. [`NOTIFY_BASE_URL`], or `http://127.0.0.1:PORT` for a stand-in.
    pub base_url: String,
    pub api_key: ApiKey,
    pub connect_timeout: Duration,
    /// The whole request, from writing it to the end of the response body.
    pub request_timeout: Duration,
}

impl NotifyConfig {
    pub fn new(base_url: &str, api_key: ApiKey) -> NotifyConfig {
        NotifyConfig {
            base_url: base_url.to_string(),
            api_key,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// One entry of Notify's error list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorEntry {
    /// E.g. `BadRequestError`, `ValidationError`, `AuthError`, `RateLimitError`.
    pub error: String,
    pub message: String,
}

/// Notify's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub status_code: u16,
    pub errors: Vec<ApiErrorEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Notify answered with an error status.
    #[error("Notify returned HTTP {status}: {}", describe(errors))]
    Api {
        status: u16,
        /// Parsed from the body; empty if the body was not Notify's error JSON.
        errors: Vec<ApiErrorEntry>,
        retry_after_secs: Option<u64>,
    },
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A success status with a body that could not be read.
    #[error("unexpected response from Notify (HTTP {status}): {message}")]
    Decode { status: u16, message: String },
}

fn describe(errors: &[ApiErrorEntry]) -> String {
    if errors.is_empty() {
        return "(no error details)".into();
    }
    errors
        .iter()
        .map(|e| format!("{}: {}", e.error, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl NotifyError {
    /// How the worker should treat it.
    ///
    /// - not sent (connect failed), 429, 500, 503 → transient (Notify says
    ///   "resend" for 500);
    /// - 403 (bad key, clock skew) → transient: a configuration fault that an
    ///   operator can fix within the retry window, not a reason to give up on
    ///   every patient at once;
    /// - no complete response, 502, 504 and other 5xx (a proxy or gateway may
    ///   have passed the request on) → ambiguous: check by reference first;
    /// - other 4xx (validation: bad number, bad address) → permanent.
    pub fn to_send_error(&self) -> SendError {
        let message = self.to_string();
        match self {
            NotifyError::Http(HttpError::NotSent(_)) => SendError::transient(message),
            NotifyError::Http(HttpError::MaybeSent(_)) => SendError::ambiguous(message),
            NotifyError::Decode { .. } => SendError::ambiguous(message),
            NotifyError::Api {
                status,
                retry_after_secs,
                ..
            } => match status {
                429 => SendError::Transient {
                    message,
                    retry_after_ms: retry_after_secs.map(|s| (s.min(86_400) * 1000) as i64),
                },
                403 | 500 | 503 => SendError::transient(message),
                500..=599 => SendError::ambiguous(message),
                _ => SendError::permanent(message),
            },
        }
    }
}

/// Notify's reply to a successful send (the fields Hale uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentNotification {
    pub id: String,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub postage: Option<String>,
}

/// One notification from `GET /v2/notifications` (the fields Hale uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSummary {
    pub id: String,
    #[serde(default)]
    pub reference: Option<String>,
    /// `sms`, `email` or `letter`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

impl NotificationSummary {
    /// Notify's failure statuses: the message was not (and will not be) delivered.
    pub fn is_failure(&self) -> bool {
        matches!(
            self.status.as_str(),
            "failed"
                | "permanent-failure"
                | "temporary-failure"
                | "technical-failure"
                | "validation-failed"
                | "virus-scan-failed"
                | "cancelled"
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
struct NotificationList {
    notifications: Vec<NotificationSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SmsRequest {
    pub phone_number: String,
    pub template_id: String,
    pub personalisation: Map<String, Value>,
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_sender_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailRequest {
    pub email_address: String,
    pub template_id: String,
    pub personalisation: Map<String, Value>,
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_reply_to_id: Option<String>,
}

/// A templated letter: `personalisation` holds `address_line_1`... and the
/// template's placeholders. Postage is a setting of the template in Notify.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LetterRequest {
    pub template_id: String,
    pub personalisation: Map<String, Value>,
    pub reference: String,
}

/// A precompiled letter: a PDF that meets Notify's letter specification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrecompiledLetterRequest {
    pub reference: String,
    /// The PDF, base64.
    pub content: String,
    /// `first` or `second`.
    pub postage: Postage,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A Notify API client. Every request gets a fresh JWT from its clock (the
/// system clock unless [`NotifyClient::with_clock`]).
pub struct NotifyClient {
    endpoint: Endpoint,
    key: ApiKey,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for NotifyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyClient")
            .field("endpoint", &self.endpoint)
            .field("key", &self.key)
            .finish()
    }
}

impl NotifyClient {
    pub fn new(config: NotifyConfig) -> Result<NotifyClient, String> {
        Ok(NotifyClient {
            endpoint: Endpoint::new(&config.base_url, config.connect_timeout, config.request_timeout)?,
            key: config.api_key,
            clock: Arc::new(SystemClock),
        })
    }

    /// Use `clock` for the token's `iat` (Notify checks it against real time).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> NotifyClient {
        self.clock = clock;
        self
    }

    fn auth_headers(&self) -> Vec<(HeaderName, String)> {
        let iat = self.clock.now_ms().div_euclid(1000);
        vec![
            (AUTHORIZATION, format!("Bearer {}", self.key.token(iat))),
            (ACCEPT, "application/json".to_string()),
        ]
    }

    fn error_from(response: &HttpResponse) -> NotifyError {
        let errors = serde_json::from_slice::<ApiErrorBody>(&response.body)
            .map(|b| b.errors)
            .unwrap_or_default();
        NotifyError::Api {
            status: response.status,
            errors,
            retry_after_secs: response.retry_after_secs,
        }
    }

    async fn post(&self, path: &str, body: &impl Serialize) -> Result<SentNotification, NotifyError> {
        let body = serde_json::to_vec(body).map_err(|e| NotifyError::Decode {
            status: 0,
            message: format!("request body: {e}"),
        })?;
        let response = self
            .endpoint
            .request(Method::POST, path, &self.auth_headers(), Some(body))
            .await?;
        if !(200..300).contains(&response.status) {
            return Err(Self::error_from(&response));
        }
        serde_json::from_slice(&response.body).map_err(|e| NotifyError::Decode {
            status: response.status,
            message: e.to_string(),
        })
    }

    pub async fn send_sms(&self, request: &SmsRequest) -> Result<SentNotification, NotifyError> {
        self.post("/v2/notifications/sms", request).await
    }

    pub async fn send_email(&self, request: &EmailRequest) -> Result<SentNotification, NotifyError> {
        self.post("/v2/notifications/email", request).await
    }

    pub async fn send_letter(&self, request: &LetterRequest) -> Result<SentNotification, NotifyError> {
        self.post("/v2/notifications/letter", request).await
    }

    pub async fn send_precompiled_letter(
        &self,
        request: &PrecompiledLetterRequest,
    ) -> Result<SentNotification, NotifyError> {
        self.post("/v2/notifications/letter", request).await
    }

    /// Notifications with this exact `reference` (first page, up to 250;
    /// Hale's references are unique per item, so one page is enough), of
    /// `template_type` (`sms`, `email`, `letter`) if given.
    pub async fn notifications_by_reference(
        &self,
        reference: &str,
        template_type: Option<&str>,
    ) -> Result<Vec<NotificationSummary>, NotifyError> {
        let mut path = format!("/v2/notifications?reference={}", query_value(reference));
        if let Some(t) = template_type {
            path.push_str(&format!("&template_type={}", query_value(t)));
        }
        let response = self
            .endpoint
            .request(Method::GET, &path, &self.auth_headers(), None)
            .await?;
        if response.status != 200 {
            return Err(Self::error_from(&response));
        }
        let list: NotificationList = serde_json::from_slice(&response.body).map_err(|e| NotifyError::Decode {
            status: response.status,
            message: e.to_string(),
        })?;
        Ok(list
            .notifications
            .into_iter()
            .filter(|n| n.reference.as_deref() == Some(reference))
            .collect())
    }
}

/// What a [`NotifyAdapter`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyKind {
    Sms {
        template_id: String,
        sms_sender_id: Option<String>,
    },
    Email {
        template_id: String,
        email_reply_to_id: Option<String>,
    },
    /// Templated letters. Notify sets postage per template, so there is one
    /// template per postage class (they may be the same template if the
    /// service only posts one class).
    Letter {
        second_class_template_id: String,
        first_class_template_id: String,
    },
    /// Hale's own PDF ([`crate::letter::render_letter`]) sent as a
    /// precompiled letter with the item's postage.
    PrecompiledLetter,
}

impl NotifyKind {
    fn template_type(&self) -> &'static str {
        match self {
            NotifyKind::Sms { .. } => "sms",
            NotifyKind::Email { .. } => "email",
            NotifyKind::Letter { .. } | NotifyKind::PrecompiledLetter => "letter",
        }
    }
}

/// Sends outbox items through Notify; checks earlier attempts by reference.
#[derive(Debug, Clone)]
pub struct NotifyAdapter {
    client: Arc<NotifyClient>,
    kind: NotifyKind,
    sender: Sender,
}

impl NotifyAdapter {
    pub fn new(client: Arc<NotifyClient>, kind: NotifyKind, sender: Sender) -> NotifyAdapter {
        NotifyAdapter { client, kind, sender }
    }

    fn text(v: &Option<String>) -> Option<String> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Envelope lines as `address_line_N` personalisation.
    fn address_lines(item: &OutboxItem) -> Result<Vec<String>, SendError> {
        let address = item
            .recipient
            .address
            .as_ref()
            .filter(|a| a.is_usable())
            .ok_or_else(|| SendError::permanent("the patient has no usable postal address"))?;
        Ok(address.envelope_lines(&item.recipient.name))
    }

    async fn send_item(&self, item: &OutboxItem, channel: Channel, now_ms: i64) -> Result<Receipt, SendError> {
        let reference = item.id.clone();
        let mut fields = personalisation(item, &self.sender);
        let sent = match (&self.kind, channel) {
            (
                NotifyKind::Sms {
                    template_id,
                    sms_sender_id,
                },
                Channel::Sms,
            ) => {
                let phone_number = Self::text(&item.recipient.mobile)
                    .ok_or_else(|| SendError::permanent("the patient has no mobile number"))?;
                self.client
                    .send_sms(&SmsRequest {
                        phone_number,
                        template_id: template_id.clone(),
                        personalisation: fields,
                        reference,
                        sms_sender_id: sms_sender_id.clone(),
                    })
                    .await
            }
            (
                NotifyKind::Email {
                    template_id,
                    email_reply_to_id,
                },
                Channel::Email,
            ) => {
                let email_address = Self::text(&item.recipient.email)
                    .ok_or_else(|| SendError::permanent("the patient has no email address"))?;
                self.client
                    .send_email(&EmailRequest {
                        email_address,
                        template_id: template_id.clone(),
                        personalisation: fields,
                        reference,
                        email_reply_to_id: email_reply_to_id.clone(),
                    })
                    .await
            }
            (
                NotifyKind::Letter {
                    second_class_template_id,
                    first_class_template_id,
                },
                Channel::Letter { postage },
            ) => {
                for (i, line) in Self::address_lines(item)?.into_iter().enumerate() {
                    fields.insert(format!("address_line_{}", i + 1), Value::String(line));
                }
                let template_id = match postage {
                    Postage::First => first_class_template_id,
                    Postage::Second => second_class_template_id,
                };
                self.client
                    .send_letter(&LetterRequest {
                        template_id: template_id.clone(),
                        personalisation: fields,
                        reference,
                    })
                    .await
            }
            (NotifyKind::PrecompiledLetter, Channel::Letter { postage }) => {
                Self::address_lines(item)?;
                let pdf = render_letter(item, &self.sender, now_ms);
                self.client
                    .send_precompiled_letter(&PrecompiledLetterRequest {
                        reference,
                        content: STANDARD.encode(pdf),
                        postage,
                    })
                    .await
            }
            (kind, channel) => {
                return Err(SendError::permanent(format!(
                    "this Notify adapter sends {} and cannot send {}",
                    kind.template_type(),
                    channel.code()
                )))
            }
        };
        match sent {
            Ok(n) => Ok(Receipt {
                provider: "notify".into(),
                detail: format!(
                    "accepted by Notify as {} notification {}",
                    self.kind.template_type(),
                    n.id
                ),
                id: Some(n.id),
            }),
            Err(e) => Err(e.to_send_error()),
        }
    }

    async fn check_item(&self, item: &OutboxItem, now_ms: i64) -> Result<Check, SendError> {
        if let Some(claim) = &item.last_claim {
            if now_ms - claim.at_ms > LOOKUP_WINDOW_MS {
                return Ok(Check::Unknown(format!(
                    "the last attempt was at {} ms, more than 6 days ago; Notify only lists 7 days of \
                     notifications, so it cannot be looked up safely (reference {})",
                    claim.at_ms, item.id
                )));
            }
        }
        let found = self
            .client
            .notifications_by_reference(&item.id, Some(self.kind.template_type()))
            .await
            .map_err(|e| match e.to_send_error() {
                // A lookup changes nothing at Notify: any failure is just "try later".
                SendError::Ambiguous { message } | SendError::Permanent { message } => SendError::transient(message),
                other => other,
            })?;
        if found.is_empty() {
            return Ok(Check::NotSent);
        }
        if let Some(ok) = found.iter().find(|n| !n.is_failure()) {
            return Ok(Check::Sent(Receipt {
                provider: "notify".into(),
                id: Some(ok.id.clone()),
                detail: format!(
                    "found at Notify by reference after an interrupted attempt: {} notification {}, status {}",
                    ok.kind, ok.id, ok.status
                ),
            }));
        }
        let statuses: Vec<String> = found.iter().map(|n| format!("{} {}", n.id, n.status)).collect();
        Ok(Check::Failed(format!(
            "Notify has this reference but it failed: {}",
            statuses.join(", ")
        )))
    }
}

impl Adapter for NotifyAdapter {
    fn name(&self) -> &'static str {
        "notify"
    }

    fn can_check(&self) -> bool {
        true
    }

    fn send<'a>(
        &'a self,
        item: &'a OutboxItem,
        channel: Channel,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Receipt, SendError>> {
        Box::pin(self.send_item(item, channel, now_ms))
    }

    fn check<'a>(&'a self, item: &'a OutboxItem, now_ms: i64) -> BoxFuture<'a, Result<Check, SendError>> {
        Box::pin(self.check_item(item, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_value("comm-1.a_b~"), "comm-1.a_b~");
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn errors_classify() {
        let api = |status| NotifyError::Api {
            status,
            errors: vec![],
            retry_after_secs: Some(7),
        };
        assert!(matches!(
            api(429).to_send_error(),
            SendError::Transient {
                retry_after_ms: Some(7000),
                ..
            }
        ));
        assert!(matches!(api(500).to_send_error(), SendError::Transient { .. }));
        assert!(matches!(api(403).to_send_error(), SendError::Transient { .. }));
        assert!(matches!(api(504).to_send_error(), SendError::Ambiguous { .. }));
        assert!(matches!(api(400).to_send_error(), SendError::Permanent { .. }));
        assert!(matches!(
            NotifyError::Http(HttpError::NotSent("x".into())).to_send_error(),
            SendError::Transient { .. }
        ));
        assert!(matches!(
            NotifyError::Http(HttpError::MaybeSent("x".into())).to_send_error(),
            SendError::Ambiguous { .. }
        ));
        let body = br#"{"status_code": 400, "errors": [{"error": "ValidationError", "message": "phone_number Not a UK mobile number"}]}"#;
        let e = NotifyClient::error_from(&HttpResponse {
            status: 400,
            retry_after_secs: None,
            body: bytes::Bytes::from_static(body),
        });
        assert_eq!(
            e.to_string(),
            "Notify returned HTTP 400: ValidationError: phone_number Not a UK mobile number"
        );
    }
}
