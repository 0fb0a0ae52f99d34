//! The two seams: the store the outbox lives in ([`Outbox`], implemented by
//! the server over FHIR `Communication` resources), and the things that send
//! ([`Adapter`]: SMTP, Notify, letters). Plus the clock.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{Channel, Claim, DeliveryOutcome, OutboxItem, Receipt};

/// A boxed, sendable future (the traits here are object-safe without `async-trait`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which items [`Outbox::pending`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingQuery {
    pub now_ms: i64,
    /// Also return `in-progress` items claimed before this instant: their
    /// worker died between claim and record.
    pub claimed_before_ms: i64,
    pub limit: usize,
}

/// The store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record's version is no longer the one given (If-Match failed).
    #[error("the record has changed since it was read (version conflict)")]
    Conflict,
    #[error("the record no longer exists")]
    Gone,
    #[error("store error: {0}")]
    Other(String),
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The record's version after the claim; the outcome is recorded against it.
    pub version: String,
}

/// The durable store of outbox records.
///
/// Every write is conditional on the item's `version` (If-Match), and a write
/// is durable (committed through the replicated log) before its future
/// resolves. That is what makes "claim, then send" safe across nodes and
/// restarts.
pub trait Outbox: Send + Sync {
    /// Up to `query.limit` items that are due, most urgent first (earliest
    /// appointment): `preparation` items whose `next_attempt_ms` is unset or
    /// `<= now_ms`, and `in-progress` items whose last claim is older than
    /// `claimed_before_ms`.
    fn pending(&self, query: PendingQuery) -> BoxFuture<'_, Result<Vec<OutboxItem>, StoreError>>;

    /// Mark `item` in progress with `claim`, if its version is still
    /// `item.version`: status `in-progress`, the claim stored on the record
    /// (see [`Claim::apply_to`]). Returns the new version.
    fn claim<'a>(&'a self, item: &'a OutboxItem, claim: &'a Claim) -> BoxFuture<'a, Result<Claimed, StoreError>>;

    /// Record `outcome` on `item`, if its version is still `item.version`
    /// (the version returned by the claim). See [`DeliveryOutcome::apply_to`]
    /// and [`DeliveryOutcome::fhir_status`].
    fn record<'a>(
        &'a self,
        item: &'a OutboxItem,
        outcome: &'a DeliveryOutcome,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Why a send did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not delivered to the provider; trying again later may work (network
    /// down before the message was written, SMTP 4xx, HTTP 429/500/503).
    #[error("temporary failure: {message}")]
    Transient {
        message: String,
        /// The provider asked to wait at least this long.
        retry_after_ms: Option<i64>,
    },
    /// The provider may or may not have taken it: the connection failed or
    /// timed out after the whole message was written. Resending risks a
    /// duplicate; check with the provider first.
    #[error("outcome unknown: {message}")]
    Ambiguous { message: String },
    /// Rejected; trying again will not help (bad address, SMTP 5xx, HTTP 400).
    #[error("rejected: {message}")]
    Permanent { message: String },
}

impl SendError {
    pub fn transient(message: impl Into<String>) -> SendError {
        SendError::Transient {
            message: message.into(),
            retry_after_ms: None,
        }
    }
    pub fn ambiguous(message: impl Into<String>) -> SendError {
        SendError::Ambiguous {
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError::Permanent {
            message: message.into(),
        }
    }
}

/// What a provider knows about an earlier attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// It has the message: the earlier attempt got through.
    Sent(Receipt),
    /// It has the message and it failed there.
    Failed(String),
    /// It certainly does not have it: sending now is not a duplicate.
    NotSent,
    /// It cannot say (SMTP): do not resend; staff check.
    Unknown(String),
}

/// Sends on one channel.
pub trait Adapter: Send + Sync {
    /// Short name for logs and receipts.
    fn name(&self) -> &'static str;

    /// Whether [`Adapter::check`] can tell "sent" from "not sent". When it
    /// cannot, an ambiguous attempt goes straight to the staff list.
    fn can_check(&self) -> bool;

    /// Send `item` on `channel` (the item's channel, or the fallback chosen
    /// because a letter would arrive too late). `now_ms` is the worker's clock.
    fn send<'a>(
        &'a self,
        item: &'a OutboxItem,
        channel: Channel,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Receipt, SendError>>;

    /// After a crash or an ambiguous attempt: did an earlier send of `item`
    /// (idempotency key `item.id`, last claim `item.last_claim`) reach the provider?
    fn check<'a>(&'a self, item: &'a OutboxItem, now_ms: i64) -> BoxFuture<'a, Result<Check, SendError>>;
}

/// Where "now" comes from. The worker reads it once per step and passes it
/// down; no pure function reads a clock.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch (UTC).
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}
