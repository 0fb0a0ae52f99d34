//! Delivery of patient notifications from a durable outbox.
//!
//! The rebooking transaction writes one FHIR `Communication` per rebooked
//! appointment (status `preparation`, the channel chosen by
//! `hale_sched::choose_channel`). This crate delivers them:
//!
//! - [`Outbox`]: the store, implemented by the server over `Communication`
//!   resources with conditional (If-Match) writes. This crate knows no HTTP
//!   routes and no SQL.
//! - [`Adapter`]s that send: [`SmtpAdapter`] (lettre), [`NotifyAdapter`]
//!   (a GOV.UK Notify-compatible HTTP API with Notify's JWT auth), and
//!   [`LetterDirectory`] (PDF letters, [`render_letter`], written for printing;
//!   or sent to Notify as precompiled letters).
//! - [`Worker`] / [`run_worker`]: claim durably before sending, send, record
//!   the outcome; retry with capped exponential backoff; never blindly resend
//!   an attempt that may have got through (check with the provider, or hand
//!   it to staff).
//! - [`staff_lists`]: phone calls, patients with no contact details, and
//!   sends to check by hand.
//!
//! Time comes from a [`Clock`] passed in; pure functions take `now_ms`.
//! See DESIGN.md.

pub mod http;
pub mod jwt;
pub mod letter;
pub mod message;
pub mod model;
pub mod notify;
pub mod outbox;
pub mod smtp;
pub mod staff;
pub mod worker;

pub use jwt::ApiKey;
pub use letter::{render_letter, LetterDirectory};
pub use message::Sender;
pub use model::{
    AppointmentInfo, Channel, Claim, DeliveryOutcome, ItemState, OutboxItem, OutcomeStatus, PostalAddress, Receipt,
    Recipient, StaffReason,
};
pub use notify::{NotifyAdapter, NotifyClient, NotifyConfig, NotifyError, NotifyKind};
pub use outbox::{Adapter, BoxFuture, Check, Claimed, Clock, Outbox, PendingQuery, SendError, StoreError, SystemClock};
pub use smtp::{SmtpAdapter, SmtpConfig, SmtpSecurity};
pub use staff::{staff_lists, StaffEntry, StaffLists};
pub use worker::{letter_in_time, run_worker, Adapters, ItemResult, PassReport, RetryPolicy, Worker, WorkerPolicy};
