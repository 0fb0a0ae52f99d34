//! The delivery worker: take due items from the outbox, claim each durably,
//! send it through the adapter for its channel, record the outcome.
//!
//! Per item (see DESIGN.md for why):
//! 1. Skip it unless it is due: `Ready` with no retry time or one that has
//!    passed, or `InProgress` with a claim older than
//!    [`WorkerPolicy::claim_stale_after`] (its worker died mid-send).
//! 2. Decide: an item that may already have been sent (orphaned claim, or an
//!    attempt that ended ambiguously) is first *checked* with the adapter that
//!    tried it; otherwise it is *sent*. A letter that would no longer arrive in
//!    time falls back (SMS, email, phone call) by `hale_sched::choose_channel`;
//!    an appointment that has already started is not notified at all.
//! 3. Claim it (If-Match on its version; losing means another worker has it).
//! 4. Check or send, each bounded by a timeout.
//! 5. Record the outcome (If-Match on the claimed version). If recording
//!    fails, the item stays claimed and a later pass treats it as orphaned.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hale_sched::letters::{choose_channel, letter_timeline, ContactPolicy};
use hale_sched::uktime::{days_between, uk_date};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::model::{Channel, Claim, DeliveryOutcome, ItemState, OutboxItem, OutcomeStatus, StaffReason};
use crate::outbox::{Adapter, Check, Clock, Outbox, PendingQuery, SendError, StoreError};

/// Exponential backoff with a cap and a bounded number of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Send attempts before giving up (the item then goes to staff).
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub base_delay_ms: i64,
    /// No delay is longer than this.
    pub max_delay_ms: i64,
    /// Up to this many thousandths of the delay are added, derived from the
    /// item's key (spreads retries of a batch; deterministic, no randomness).
    pub jitter_permille: u32,
}

impl Default for RetryPolicy {
    /// 6 attempts: retries after 2, 4, 8, 16 and 32 minutes (+ up to 10%).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay_ms: 2 * 60_000,
            max_delay_ms: 60 * 60_000,
            jitter_permille: 100,
        }
    }
}

impl RetryPolicy {
    /// The delay after `failed_attempts` (>= 1) failed attempts of the item
    /// with key `key`: `base * 2^(n-1)`, capped, plus jitter.
    pub fn delay_ms(&self, failed_attempts: u32, key: &str) -> i64 {
        let n = failed_attempts.max(1) - 1;
        let base = self.base_delay_ms.max(0);
        let delay = if n >= 40 {
            self.max_delay_ms
        } else {
            base.saturating_mul(1i64 << n).min(self.max_delay_ms)
        };
        let span = delay.saturating_mul(i64::from(self.jitter_permille)) / 1000;
        if span <= 0 {
            return delay;
        }
        let h = Sha256::digest(format!("{key}/{failed_attempts}").as_bytes());
        let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        delay + (x % (span as u64 + 1)) as i64
    }
}

/// How the worker behaves. Everything is bounded.
#[derive(Debug, Clone)]
pub struct WorkerPolicy {
    /// Stored on claims; the node id is a good choice.
    pub worker_id: String,
    /// Items fetched per pass.
    pub batch_size: usize,
    /// Items in flight at once.
    pub concurrency: usize,
    /// Sleep between passes when there is nothing to do.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    /// One send or check, end to end (adapters also bound their own steps).
    pub send_timeout: Duration,
    /// One outbox call.
    pub store_timeout: Duration,
    /// A claim older than this with no outcome belongs to a dead worker.
    /// Must be well above `send_timeout + store_timeout`.
    pub claim_stale_after: Duration,
    /// Margin, postage classes and calendar for re-checking that a letter
    /// still arrives in time, and for choosing a fallback when it does not.
    pub contact: ContactPolicy,
}

impl WorkerPolicy {
    pub fn new(worker_id: &str) -> WorkerPolicy {
        WorkerPolicy {
            worker_id: worker_id.to_string(),
            batch_size: 50,
            concurrency: 4,
            poll_interval: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            send_timeout: Duration::from_secs(60),
            store_timeout: Duration::from_secs(15),
            claim_stale_after: Duration::from_secs(10 * 60),
            contact: ContactPolicy::default(),
        }
    }

    /// Checks the bounds hang together.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(format!("batch_size {} must be 1..=10000", self.batch_size));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(format!("concurrency {} must be 1..=256", self.concurrency));
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > 100 {
            return Err(format!("max_attempts {} must be 1..=100", self.retry.max_attempts));
        }
        if self.claim_stale_after < 2 * (self.send_timeout + 2 * self.store_timeout) {
            return Err(format!(
                "claim_stale_after ({:?}) must be at least twice send_timeout + 2 x store_timeout ({:?}), \
                 or a slow send could be taken for a dead one",
                self.claim_stale_after,
                self.send_timeout + 2 * self.store_timeout
            ));
        }
        Ok(())
    }
}

/// The adapters, by channel. A channel without one is not sent: its items go
/// to staff as "channel unavailable".
#[derive(Clone, Default)]
pub struct Adapters {
    pub letter: Option<Arc<dyn Adapter>>,
    pub sms: Option<Arc<dyn Adapter>>,
    pub email: Option<Arc<dyn Adapter>>,
}

impl Adapters {
    pub fn for_channel(&self, channel: Channel) -> Option<&Arc<dyn Adapter>> {
        match channel {
            Channel::Letter { .. } => self.letter.as_ref(),
            Channel::Sms => self.sms.as_ref(),
            Channel::Email => self.email.as_ref(),
            Channel::PhoneCall | Channel::StaffList => None,
        }
    }
}

/// What happened to one item in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Not due, or claimed by a live worker, or already done.
    Skipped,
    /// Another worker changed it first.
    Lost,
    /// Claimed and the outcome recorded.
    Recorded(DeliveryOutcome),
    /// Claimed, but the store failed before the outcome was recorded; a later
    /// pass recovers it (as orphaned).
    StoreFailed(String),
}

/// Counts for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub fetched: usize,
    pub skipped: usize,
    pub lost: usize,
    pub sent: usize,
    pub retry_scheduled: usize,
    pub failed: usize,
    pub waiting_for_staff: usize,
    pub store_errors: usize,
    /// `pending` itself failed.
    pub pending_error: Option<String>,
}

impl PassReport {
    fn add(&mut self, r: &ItemResult) {
        match r {
            ItemResult::Skipped => self.skipped += 1,
            ItemResult::Lost => self.lost += 1,
            ItemResult::StoreFailed(_) => self.store_errors += 1,
            ItemResult::Recorded(o) => match o.status {
                OutcomeStatus::Sent { .. } => self.sent += 1,
                OutcomeStatus::Retry { .. } => self.retry_scheduled += 1,
                OutcomeStatus::Failed { .. } => self.failed += 1,
                OutcomeStatus::WaitingForStaff { .. } => self.waiting_for_staff += 1,
            },
        }
    }

    /// Items claimed and recorded.
    pub fn recorded(&self) -> usize {
        self.sent + self.retry_scheduled + self.failed + self.waiting_for_staff
    }

    /// Adds another pass's counts.
    pub fn absorb(&mut self, other: &PassReport) {
        self.fetched += other.fetched;
        self.skipped += other.skipped;
        self.lost += other.lost;
        self.sent += other.sent;
        self.retry_scheduled += other.retry_scheduled;
        self.failed += other.failed;
        self.waiting_for_staff += other.waiting_for_staff;
        self.store_errors += other.store_errors;
        if other.pending_error.is_some() {
            self.pending_error.clone_from(&other.pending_error);
        }
    }
}

/// Does a letter posted at `now_ms` with `postage` arrive `margin_days`
/// before the appointment's date?
pub fn letter_in_time(
    now_ms: i64,
    postage: hale_sched::letters::Postage,
    appointment_ms: i64,
    policy: &ContactPolicy,
) -> bool {
    let t = letter_timeline(now_ms, postage, &policy.calendar);
    days_between(t.delivered, uk_date(appointment_ms)) >= policy.margin_days
}

fn appointment_passed() -> OutcomeStatus {
    OutcomeStatus::Failed {
        error: "the appointment started before the patient could be told; contact them to rebook".into(),
    }
}

/// What to do with a due item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Ask the adapter for `channel` whether the earlier attempt got through.
    Check(Channel),
    Send(Channel),
    /// Record as waiting for staff (phone call / staff list channels).
    Staff(Channel),
    /// The appointment has started; nothing to send.
    TooLate,
}

/// The delivery worker. Cheap to clone (all shared).
#[derive(Clone)]
pub struct Worker {
    outbox: Arc<dyn Outbox>,
    adapters: Arc<Adapters>,
    policy: Arc<WorkerPolicy>,
    clock: Arc<dyn Clock>,
    claims: Arc<AtomicU64>,
}

impl Worker {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        adapters: Adapters,
        policy: WorkerPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Worker, String> {
        policy.validate()?;
        Ok(Worker {
            outbox,
            adapters: Arc::new(adapters),
            policy: Arc::new(policy),
            clock,
            claims: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn policy(&self) -> &WorkerPolicy {
        &self.policy
    }

    fn stale_ms(&self) -> i64 {
        self.policy.claim_stale_after.as_millis() as i64
    }

    /// The channel to send on now: the item's, unless it is a letter that
    /// would now arrive too late, in which case `choose_channel` decides again.
    fn channel_now(&self, item: &OutboxItem, now_ms: i64) -> Channel {
        match item.channel {
            Channel::Letter { postage }
                if !letter_in_time(now_ms, postage, item.appointment.start_ms, &self.policy.contact) =>
            {
                Channel::from(choose_channel(
                    now_ms,
                    item.appointment.start_ms,
                    &item.recipient.contact(),
                    &self.policy.contact,
                ))
            }
            c => c,
        }
    }

    fn plan(&self, item: &OutboxItem, now_ms: i64) -> Option<Plan> {
        let orphaned = match item.state {
            ItemState::Ready => false,
            ItemState::InProgress => {
                let at = item.last_claim.as_ref().map_or(i64::MIN, |c| c.at_ms);
                if now_ms.saturating_sub(at) < self.stale_ms() {
                    return None;
                }
                true
            }
            _ => return None,
        };
        if !orphaned && item.next_attempt_ms.is_some_and(|t| t > now_ms) {
            return None;
        }
        let maybe_sent = orphaned || item.maybe_sent;
        if maybe_sent {
            let tried = item.last_claim.as_ref().map_or(item.channel, |c| c.channel);
            if tried.is_sent_by_adapter() {
                return Some(Plan::Check(tried));
            }
        }
        if item.appointment.start_ms <= now_ms {
            return Some(Plan::TooLate);
        }
        let channel = self.channel_now(item, now_ms);
        Some(if channel.is_sent_by_adapter() {
            Plan::Send(channel)
        } else {
            Plan::Staff(channel)
        })
    }

    async fn store<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.policy.store_timeout, fut).await {
            Err(_) => Err(StoreError::Other(format!(
                "outbox call timed out after {:?}",
                self.policy.store_timeout
            ))),
            Ok(r) => r,
        }
    }

    async fn claim(&self, item: &mut OutboxItem, channel: Channel, attempt: u32) -> Result<(), ItemResult> {
        let now = self.clock.now_ms();
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let claim = Claim {
            id: format!("{}-{}-{}", self.policy.worker_id, now, n),
            worker: self.policy.worker_id.clone(),
            at_ms: now,
            channel,
            attempt,
        };
        match self.store(self.outbox.claim(item, &claim)).await {
            Ok(claimed) => {
                item.version = claimed.version;
                claim.apply_to(item);
                Ok(())
            }
            Err(StoreError::Conflict | StoreError::Gone) => Err(ItemResult::Lost),
            Err(StoreError::Other(e)) => {
                tracing::warn!(item = %item.id, error = %e, "claim failed");
                Err(ItemResult::StoreFailed(e))
            }
        }
    }

    async fn record(&self, item: &OutboxItem, outcome: DeliveryOutcome) -> ItemResult {
        match self.store(self.outbox.record(item, &outcome)).await {
            Ok(()) => {
                tracing::info!(
                    item = %item.id,
                    channel = outcome.channel.code(),
                    status = outcome.fhir_status(),
                    attempts = outcome.attempts,
                    "notification outcome recorded"
                );
                ItemResult::Recorded(outcome)
            }
            Err(e) => {
                // The item stays in progress; after `claim_stale_after` it is
                // recovered as orphaned (checked before any resend).
                tracing::warn!(item = %item.id, error = %e, "recording the outcome failed");
                ItemResult::StoreFailed(e.to_string())
            }
        }
    }

    fn outcome(&self, attempts: u32, channel: Channel, status: OutcomeStatus) -> DeliveryOutcome {
        DeliveryOutcome {
            at_ms: self.clock.now_ms(),
            attempts,
            channel,
            status,
        }
    }

    /// The outcome for a phone-call or staff-list item.
    fn staff_outcome(&self, attempts: u32, channel: Channel) -> DeliveryOutcome {
        let (reason, detail) = match channel {
            Channel::PhoneCall => (
                StaffReason::PhoneCall,
                "no letter arrives in time and there is no mobile number or email: phone the patient",
            ),
            _ => (
                StaffReason::NoContactDetails,
                "no usable phone number, email or postal address: find another way to reach the patient",
            ),
        };
        self.staff(attempts, channel, reason, detail.into())
    }

    fn staff(&self, attempts: u32, channel: Channel, reason: StaffReason, detail: String) -> DeliveryOutcome {
        self.outcome(attempts, channel, OutcomeStatus::WaitingForStaff { reason, detail })
    }

    async fn timed<T>(&self, fut: impl Future<Output = Result<T, SendError>>) -> Result<T, SendError> {
        match tokio::time::timeout(self.policy.send_timeout, fut).await {
            Err(_) => Err(SendError::ambiguous(format!(
                "no answer within {:?}",
                self.policy.send_timeout
            ))),
            Ok(r) => r,
        }
    }

    /// Processes one item end to end.
    pub async fn process(&self, mut item: OutboxItem) -> ItemResult {
        let now = self.clock.now_ms();
        let Some(plan) = self.plan(&item, now) else {
            return ItemResult::Skipped;
        };
        match plan {
            Plan::TooLate => {
                let (channel, attempts) = (item.channel, item.attempts);
                if let Err(r) = self.claim(&mut item, channel, attempts).await {
                    return r;
                }
                let o = self.outcome(item.attempts, item.channel, appointment_passed());
                self.record(&item, o).await
            }
            Plan::Staff(channel) => {
                let attempts = item.attempts;
                if let Err(r) = self.claim(&mut item, channel, attempts).await {
                    return r;
                }
                let o = self.staff_outcome(item.attempts, channel);
                self.record(&item, o).await
            }
            Plan::Check(channel) => self.check_then_send(item, channel).await,
            Plan::Send(channel) => self.send(item, channel).await,
        }
    }

    async fn check_then_send(&self, mut item: OutboxItem, tried: Channel) -> ItemResult {
        let attempts = item.attempts;
        if let Err(r) = self.claim(&mut item, tried, attempts).await {
            return r;
        }
        let Some(adapter) = self.adapters.for_channel(tried).cloned() else {
            let o = self.staff(
                item.attempts,
                tried,
                StaffReason::DeliveryUnknown,
                format!(
                    "an earlier {} attempt was interrupted and no adapter is configured to check it",
                    tried.code()
                ),
            );
            return self.record(&item, o).await;
        };
        let now = self.clock.now_ms();
        let checked = self.timed(adapter.check(&item, now)).await;
        let attempts = item.attempts;
        let o = match checked {
            Ok(Check::Sent(receipt)) => self.outcome(attempts, tried, OutcomeStatus::Sent { receipt }),
            Ok(Check::Failed(error)) => self.outcome(attempts, tried, OutcomeStatus::Failed { error }),
            Ok(Check::Unknown(detail)) => self.staff(attempts, tried, StaffReason::DeliveryUnknown, detail),
            Ok(Check::NotSent) => {
                // Safe to send. Decide again from now (a letter may now be too
                // late); `send` claims again for the new attempt.
                item.maybe_sent = false;
                let now = self.clock.now_ms();
                if item.appointment.start_ms <= now {
                    self.outcome(attempts, item.channel, appointment_passed())
                } else {
                    let channel = self.channel_now(&item, now);
                    if channel.is_sent_by_adapter() {
                        return self.send(item, channel).await;
                    }
                    self.staff_outcome(attempts, channel)
                }
            }
            Err(e) => {
                // Could not find out. Counts as an attempt so that it is bounded.
                let attempts = attempts + 1;
                if attempts >= self.policy.retry.max_attempts {
                    self.staff(
                        attempts,
                        tried,
                        StaffReason::DeliveryUnknown,
                        format!("could not check an interrupted attempt after {attempts} tries: {e}"),
                    )
                } else {
                    let now = self.clock.now_ms();
                    self.outcome(
                        attempts,
                        tried,
                        OutcomeStatus::Retry {
                            next_attempt_ms: now + self.policy.retry.delay_ms(attempts, &item.id),
                            error: format!("checking an interrupted attempt: {e}"),
                            maybe_sent: true,
                        },
                    )
                }
            }
        };
        self.record(&item, o).await
    }

    async fn send(&self, mut item: OutboxItem, channel: Channel) -> ItemResult {
        let attempt = item.attempts + 1;
        if let Err(r) = self.claim(&mut item, channel, attempt).await {
            return r;
        }
        let Some(adapter) = self.adapters.for_channel(channel).cloned() else {
            let o = self.staff(
                item.attempts,
                channel,
                StaffReason::ChannelUnavailable,
                format!("no {} adapter is configured", channel.code()),
            );
            return self.record(&item, o).await;
        };
        let now = self.clock.now_ms();
        let sent = self.timed(adapter.send(&item, channel, now)).await;
        let max = self.policy.retry.max_attempts;
        let o = match sent {
            Ok(receipt) => self.outcome(attempt, channel, OutcomeStatus::Sent { receipt }),
            Err(SendError::Permanent { message }) => {
                self.outcome(attempt, channel, OutcomeStatus::Failed { error: message })
            }
            Err(SendError::Transient {
                message,
                retry_after_ms,
            }) => {
                if attempt >= max {
                    self.outcome(
                        attempt,
                        channel,
                        OutcomeStatus::Failed {
                            error: format!("gave up after {attempt} attempts; last: {message}"),
                        },
                    )
                } else {
                    let now = self.clock.now_ms();
                    // The provider's Retry-After, if longer, bounded by a day.
                    let delay = self
                        .policy
                        .retry
                        .delay_ms(attempt, &item.id)
                        .max(retry_after_ms.unwrap_or(0).min(24 * 3600 * 1000));
                    self.outcome(
                        attempt,
                        channel,
                        OutcomeStatus::Retry {
                            next_attempt_ms: now + delay,
                            error: message,
                            maybe_sent: false,
                        },
                    )
                }
            }
            Err(SendError::Ambiguous { message }) => {
                if adapter.can_check() && attempt < max {
                    let now = self.clock.now_ms();
                    self.outcome(
                        attempt,
                        channel,
                        OutcomeStatus::Retry {
                            next_attempt_ms: now + self.policy.retry.delay_ms(attempt, &item.id),
                            error: message,
                            maybe_sent: true,
                        },
                    )
                } else {
                    let detail = if adapter.can_check() {
                        format!("gave up after {attempt} attempts; the last may have been delivered: {message}")
                    } else {
                        match self.timed(adapter.check(&item, now)).await {
                            Ok(Check::Unknown(d)) => format!("{message}; {d}"),
                            _ => message,
                        }
                    };
                    self.staff(attempt, channel, StaffReason::DeliveryUnknown, detail)
                }
            }
        };
        self.record(&item, o).await
    }

    /// One pass: fetch up to `batch_size` due items, process them (earliest
    /// appointment first, `concurrency` at a time). Stops starting new items
    /// once `stop` is set; items already started finish.
    pub async fn run_pass(&self, stop: &Arc<AtomicBool>) -> PassReport {
        let mut report = PassReport::default();
        let now = self.clock.now_ms();
        let query = PendingQuery {
            now_ms: now,
            claimed_before_ms: now - self.stale_ms(),
            limit: self.policy.batch_size,
        };
        let mut items = match self.store(self.outbox.pending(query)).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed");
                report.pending_error = Some(e.to_string());
                return report;
            }
        };
        items.truncate(self.policy.batch_size);
        items.sort_by(|a, b| {
            a.appointment
                .start_ms
                .cmp(&b.appointment.start_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        report.fetched = items.len();
        let mut queue = items.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < self.policy.concurrency && !stop.load(Ordering::SeqCst) {
                let Some(item) = queue.next() else { break };
                let w = self.clone();
                running.spawn(async move { w.process(item).await });
            }
            match running.join_next().await {
                Some(Ok(r)) => report.add(&r),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a delivery task failed");
                    report.store_errors += 1;
                }
                None => break,
            }
        }
        report.skipped += queue.len();
        report
    }

    /// Runs passes until `shutdown` resolves. A pass that recorded a full
    /// batch is followed at once by another; otherwise the worker sleeps for
    /// `poll_interval`. On shutdown, items already being sent finish and are
    /// recorded (stopping mid-send would leave "delivery unknown" items).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> PassReport {
        let stop = Arc::new(AtomicBool::new(false));
        let mut total = PassReport::default();
        tokio::pin!(shutdown);
        loop {
            let pass = self.run_pass(&stop);
            tokio::pin!(pass);
            let report = tokio::select! {
                r = &mut pass => r,
                () = &mut shutdown => {
                    stop.store(true, Ordering::SeqCst);
                    let r = pass.await;
                    total.absorb(&r);
                    return total;
                }
            };
            total.absorb(&report);
            let busy = report.recorded() > 0 && report.fetched >= self.policy.batch_size;
            if !busy {
                tokio::select! {
                    () = tokio::time::sleep(self.policy.poll_interval) => {}
                    () = &mut shutdown => return total,
                }
            }
        }
    }
}

/// Runs a [`Worker`] until `shutdown` resolves; returns the totals.
pub async fn run_worker(
    outbox: Arc<dyn Outbox>,
    adapters: Adapters,
    policy: WorkerPolicy,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<PassReport, String> {
    let worker = Worker::new(outbox, adapters, policy, clock)?;
    Ok(worker.run(shutdown).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 6,
            base_delay_ms: 1000,
            max_delay_ms: 10_000,
            jitter_permille: 0,
        };
        let got: Vec<i64> = (1..=6).map(|n| p.delay_ms(n, "k")).collect();
        assert_eq!(got, [1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(p.delay_ms(200, "k"), 10_000);
        let j = RetryPolicy {
            jitter_permille: 100,
            ..p
        };
        for n in 1..=6 {
            let d = j.delay_ms(n, "k");
            let base = p.delay_ms(n, "k");
            assert!(d >= base && d <= base + base / 10, "{n}: {d}");
            assert_eq!(d, j.delay_ms(n, "k"), "deterministic");
        }
    }

    #[test]
    fn policy_bounds() {
        assert!(WorkerPolicy::new("n1").validate().is_ok());
        let mut p = WorkerPolicy::new("n1");
        p.claim_stale_after = Duration::from_secs(30);
        assert!(p.validate().is_err());
        let mut p = WorkerPolicy::new("n1");
        p.batch_size = 0;
        assert!(p.validate().is_err());
    }
}
