//! Shared test fixtures: an in-memory outbox (a fake store; the adapters under
//! test are real), a clock the test moves, and sample patients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use hale_notify::{
    AppointmentInfo, BoxFuture, Channel, Claim, Claimed, Clock, DeliveryOutcome, ItemState, Outbox, OutboxItem,
    PendingQuery, PostalAddress, Recipient, Sender, StoreError,
};
use hale_sched::uktime::uk_at;

/// A clock the test sets.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An outbox in memory with the semantics the server must provide:
/// conditional writes on `version`, and `pending` as documented.
#[derive(Default)]
pub struct MemOutbox {
    items: Mutex<BTreeMap<String, OutboxItem>>,
    next_version: AtomicUsize,
    /// Fail this many `record` calls (a crash between send and record).
    pub fail_records: AtomicUsize,
    pub claims: Mutex<Vec<(String, Claim)>>,
    pub records: Mutex<Vec<(String, DeliveryOutcome)>>,
}

impl MemOutbox {
    pub fn new(items: impl IntoIterator<Item = OutboxItem>) -> Arc<MemOutbox> {
        let o = MemOutbox::default();
        for mut item in items {
            item.version = "1".into();
            o.items.lock().unwrap().insert(item.id.clone(), item);
        }
        o.next_version.store(2, Ordering::SeqCst);
        Arc::new(o)
    }

    pub fn get(&self, id: &str) -> OutboxItem {
        self.items.lock().unwrap().get(id).cloned().expect("item exists")
    }

    pub fn all(&self) -> Vec<OutboxItem> {
        self.items.lock().unwrap().values().cloned().collect()
    }

    pub fn outcomes(&self, id: &str) -> Vec<DeliveryOutcome> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn bump(&self) -> String {
        self.next_version.fetch_add(1, Ordering::SeqCst).to_string()
    }
}

impl Outbox for MemOutbox {
    fn pending(&self, q: PendingQuery) -> BoxFuture<'_, Result<Vec<OutboxItem>, StoreError>> {
        let mut due: Vec<OutboxItem> = self
            .items
            .lock()
            .unwrap()
            .values()
            .filter(|i| match i.state {
                ItemState::Ready => i.next_attempt_ms.is_none_or(|t| t <= q.now_ms),
                ItemState::InProgress => i.last_claim.as_ref().is_none_or(|c| c.at_ms < q.claimed_before_ms),
                _ => false,
            })
            .cloned()
            .collect();
        due.sort_by_key(|i| i.appointment.start_ms);
        due.truncate(q.limit);
        Box::pin(async move { Ok(due) })
    }

    fn claim<'a>(&'a self, item: &'a OutboxItem, claim: &'a Claim) -> BoxFuture<'a, Result<Claimed, StoreError>> {
        let r = {
            let mut items = self.items.lock().unwrap();
            match items.get_mut(&item.id) {
                None => Err(StoreError::Gone),
                Some(stored) if stored.version != item.version => Err(StoreError::Conflict),
                Some(stored) => {
                    claim.apply_to(stored);
                    stored.version = self.bump();
                    self.claims.lock().unwrap().push((item.id.clone(), claim.clone()));
                    Ok(Claimed {
                        version: stored.version.clone(),
                    })
                }
            }
        };
        Box::pin(async move { r })
    }

    fn record<'a>(
        &'a self,
        item: &'a OutboxItem,
        outcome: &'a DeliveryOutcome,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = if self
            .fail_records
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            Err(StoreError::Other(
                "simulated crash before the outcome was recorded".into(),
            ))
        } else {
            let mut items = self.items.lock().unwrap();
            match items.get_mut(&item.id) {
                None => Err(StoreError::Gone),
                Some(stored) if stored.version != item.version => Err(StoreError::Conflict),
                Some(stored) => {
                    outcome.apply_to(stored);
                    stored.version = self.bump();
                    self.records.lock().unwrap().push((item.id.clone(), outcome.clone()));
                    Ok(())
                }
            }
        };
        Box::pin(async move { r })
    }
}

pub fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// UK local wall-clock time on `day` as ms.
pub fn uk(day: &str, hh: u32, mm: u32) -> i64 {
    uk_at(date(day), hh, mm)
}

pub fn sender() -> Sender {
    Sender {
        organisation: "Hale General Hospital".into(),
        phone: "0141 496 0000".into(),
        return_address: vec![
            "Outpatient Bookings".into(),
            "1 Infirmary Square".into(),
            "Glasgow".into(),
            "G4 0SF".into(),
        ],
    }
}

pub fn address() -> PostalAddress {
    PostalAddress {
        line: vec!["Flat 2/1".into(), "14 Hyndland Road".into()],
        city: Some("Glasgow".into()),
        district: None,
        postal_code: Some("G12 9UX".into()),
        country: Some("United Kingdom".into()),
    }
}

/// An item for patient `n`: appointment Tuesday 13 October 2026 09:30,
/// replacing Monday 5 October 10:00.
pub fn item(id: &str, channel: Channel) -> OutboxItem {
    OutboxItem {
        id: id.into(),
        version: "1".into(),
        channel,
        state: ItemState::Ready,
        attempts: 0,
        next_attempt_ms: None,
        maybe_sent: false,
        last_claim: None,
        recipient: Recipient {
            patient_id: format!("pat-{id}"),
            name: "Ada Okafor".into(),
            nhs_number: Some("999 123 4567".into()),
            mobile: Some("+447700900123".into()),
            phone: Some("0141 496 0999".into()),
            email: Some("ada.okafor@example.org".into()),
            address: Some(address()),
        },
        appointment: AppointmentInfo {
            id: format!("appt-{id}"),
            start_ms: uk("2026-10-13", 9, 30),
            end_ms: Some(uk("2026-10-13", 9, 50)),
            service: "Cardiology outpatient clinic".into(),
            location: "Outpatients B, Royal Infirmary".into(),
            practitioner: Some("Dr Priya Rao".into()),
            previous_id: Some(format!("old-{id}")),
            previous_start_ms: Some(uk("2026-10-05", 10, 0)),
            reason: Some("an IT failure at the hospital".into()),
        },
    }
}

pub const NEW_TIME: &str = "Tuesday 13 October 2026 at 9:30am";
pub const OLD_TIME: &str = "Monday 5 October 2026 at 10:00am";

/// A loopback port nothing is listening on (yet).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Collapses runs of whitespace (for text read back from PDFs and emails).
pub fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
