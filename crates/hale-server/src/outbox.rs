//! Patient contact: the `hale_notify` delivery worker over this node's outbox
//! `Communication`s, and the staff lists.
//!
//! `$rebook` writes one `Communication` per rebooked appointment (status
//! `preparation`, category `appointment-rebooked`, the channel in `medium`).
//! [`ServerOutbox`] implements [`hale_notify::Outbox`] over them:
//!
//! - `pending` searches the outbox through the read pool, keeps what is due
//!   (a retry time that has passed, or a claim older than the stale limit),
//!   orders it by appointment time and joins the Patient (name, NHS number,
//!   telecom, address) and the Appointments in `about` (new and replaced:
//!   times, service, location, practitioner) into `OutboxItem`s;
//! - `claim` and `record` are `Update`s with `if_match` on the version read,
//!   proposed through the replicated log, so only one worker anywhere wins a
//!   claim and nothing is recorded over a change it did not see. They change
//!   status, extensions, `sent`, `identifier`, `statusReason`, `medium` and
//!   `note`, and keep everything else (`about`, tags, payload) as it is.
//!
//! The worker runs only on the raft leader (checked on every pass; followers
//! idle) and only when `[notify]` configures an adapter. A record whose new
//! appointment was cancelled or removed before anything was sent is marked
//! `stopped` instead of being sent.
//!
//! `GET /Communication/$staff-lists` (admin or service) gives
//! `hale_notify::staff_lists` over the records staff must act on, as CSV or JSON.

use crate::auth::Principal;
use crate::config::Role;
use crate::outage::OutageSettings;
use crate::outage::{channel_of, drop_exts, ext, instant_ms, participants, read_json, refs_of, search_all, set_ext};
use crate::rest::Ctx;
use crate::wire::{instant, FhirError};
use crate::App;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hale_fhir::{codes, IssueCode, ResourceType};
use hale_notify::{
    Adapter, Adapters, ApiKey, AppointmentInfo, BoxFuture, Channel, Claim, Claimed, DeliveryOutcome, ItemState,
    LetterDirectory, NotifyAdapter, NotifyClient, NotifyConfig, NotifyKind, Outbox, OutboxItem, OutcomeStatus,
    PendingQuery, PostalAddress, Recipient, RetryPolicy, Sender, SmtpAdapter, SmtpConfig, SmtpSecurity, StaffLists,
    StaffReason, StoreError, SystemClock, WorkerPolicy,
};
use hale_sched::letters::{choose_channel, letter_timeline, ContactPolicy};
use hale_sched::{Calendar, Postage};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::{Actor, AuditAction, CommandKind, RejectKind, WriteOp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Complex extension on an outbox Communication: the latest claim (`id`,
/// `worker`, `at`, `channel`, `postage` for letters, `attempt`).
pub const EXT_CLAIM: &str = "https://hale.health/fhir/StructureDefinition/notification-claim";
/// Send attempts so far (`valueUnsignedInt`).
pub const EXT_ATTEMPTS: &str = "https://hale.health/fhir/StructureDefinition/notification-attempts";
/// When the next attempt is due (`valueInstant`); only while a retry waits.
pub const EXT_NEXT_ATTEMPT: &str = "https://hale.health/fhir/StructureDefinition/notification-next-attempt";
/// The last attempt may have reached the provider: check before resending (`valueBoolean` true).
pub const EXT_MAYBE_SENT: &str = "https://hale.health/fhir/StructureDefinition/notification-maybe-sent";
/// `Communication.statusReason` codes: `phone-call`, `no-contact-details`, `delivery-unknown`,
/// `channel-unavailable`, `delivery-failed`, `retry`, `appointment-cancelled`.
pub const STATUS_REASON_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/notification-status-reason";
/// `Communication.identifier` added on delivery: the provider's id (SMTP Message-ID,
/// Notify notification id, letter file name).
pub const RECEIPT_ID_SYSTEM: &str = "https://hale.health/fhir/Id/notification-receipt";
/// Who the worker's writes are by.
pub const ACTOR_USER: &str = "hale-notify";
/// Delivery notes kept on a record (the oldest are dropped).
pub const NOTES_MAX: usize = 20;

const PARTICIPATION_MODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode";
/// Statuses of a new appointment that mean there is nothing to tell the patient about.
const GONE_STATUSES: &[&str] = &["cancelled", "noshow", "entered-in-error"];

// ---------------------------------------------------------------------------
// Settings

/// A configured secret: serialised as the plain string, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Patient contact (`[notify]`). The delivery worker runs only when at least one
/// adapter (`smtp`, `govuk`, `letters`) is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// Who messages are from (organisation, phone number, return address for letters).
    pub sender: SenderSettings,
    /// Email over SMTP (preferred for email when both it and `govuk` can send email).
    pub smtp: Option<SmtpSettings>,
    /// A GOV.UK Notify-compatible API: SMS, email and letters by template id.
    pub govuk: Option<GovukSettings>,
    /// Letters as PDF files in a directory (preferred for letters over `govuk`).
    pub letters: Option<LetterSettings>,
    /// Pause between passes when there is nothing to do.
    pub poll_interval_ms: u64,
    /// Records fetched per pass.
    pub batch_size: usize,
    /// Sends in flight at once.
    pub concurrency: usize,
    /// Send attempts before a record goes to staff.
    pub max_attempts: u32,
    /// Delay after the first failed attempt; it doubles per attempt up to `retry_max_ms`.
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    /// One send or check, end to end.
    pub send_timeout_ms: u64,
    /// A claim older than this with no outcome belongs to a dead worker (it is
    /// then checked with the provider, never blindly resent).
    pub claim_stale_after_ms: u64,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            sender: SenderSettings::default(),
            smtp: None,
            govuk: None,
            letters: None,
            poll_interval_ms: 10_000,
            batch_size: 50,
            concurrency: 4,
            max_attempts: 6,
            retry_base_ms: 2 * 60_000,
            retry_max_ms: 60 * 60_000,
            send_timeout_ms: 60_000,
            claim_stale_after_ms: 10 * 60_000,
        }
    }
}

impl NotifySettings {
    /// At least one adapter is configured.
    pub fn enabled(&self) -> bool {
        self.smtp.is_some() || self.govuk.is_some() || self.letters.is_some()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderSettings {
    /// E.g. "Hale General Hospital".
    pub organisation: String,
    /// The number patients call to change an appointment.
    pub phone: String,
    /// The organisation's postal address, one line per entry (letters).
    pub return_address: Vec<String>,
}

fn default_smtp_port() -> u16 {
    25
}
fn default_step_timeout_ms() -> u64 {
    30_000
}
fn default_govuk_url() -> String {
    hale_notify::notify::NOTIFY_BASE_URL.to_string()
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_request_timeout_ms() -> u64 {
    20_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// The relay.
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `none` (default), `start-tls` or `tls` (the last two need hale-notify's `rustls` feature).
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// `From:`, e.g. `Hale General Hospital <appointments@hale.example>`.
    pub from: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The EHLO name (default: `message_id_domain`).
    #[serde(default)]
    pub hello_name: Option<String>,
    /// Right-hand side of Message-IDs (default: the domain of `from`).
    #[serde(default)]
    pub message_id_domain: Option<String>,
    /// Each step of the SMTP conversation.
    #[serde(default = "default_step_timeout_ms")]
    pub step_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovukSettings {
    #[serde(default = "default_govuk_url")]
    pub base_url: String,
    /// `{key_name}-{service_id}-{secret_key}`.
    pub api_key: Secret,
    /// SMS is sent only when this is set.
    #[serde(default)]
    pub sms_template: Option<String>,
    #[serde(default)]
    pub sms_sender_id: Option<String>,
    /// Email through Notify when this is set and `[notify.smtp]` is not.
    #[serde(default)]
    pub email_template: Option<String>,
    #[serde(default)]
    pub email_reply_to_id: Option<String>,
    /// Templated letters (Notify sets postage per template): one per class; if
    /// only one is given it is used for both.
    #[serde(default)]
    pub letter_template_second_class: Option<String>,
    #[serde(default)]
    pub letter_template_first_class: Option<String>,
    /// Without letter templates: send Hale's own PDF as precompiled letters.
    #[serde(default)]
    pub precompiled_letters: bool,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterSettings {
    /// Where PDF letters (and their JSON) are written for printing; created if missing.
    pub dir: PathBuf,
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The letter-timing policy `$rebook` chose channels with (`[outage]`): the
/// worker re-checks letters against the same margin and calendar.
pub fn contact_policy(outage: &OutageSettings) -> ContactPolicy {
    ContactPolicy {
        margin_days: outage.letter_margin_days,
        calendar: if outage.bank_holidays.is_empty() {
            Calendar::england_and_wales()
        } else {
            Calendar::new(outage.bank_holidays.iter().copied())
        },
        ..ContactPolicy::default()
    }
}

fn sender_of(s: &SenderSettings) -> Sender {
    Sender {
        organisation: s.organisation.trim().to_string(),
        phone: s.phone.trim().to_string(),
        return_address: s
            .return_address
            .iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    }
}

fn smtp_adapter(s: &SmtpSettings, sender: Sender) -> Result<SmtpAdapter, String> {
    let domain = match non_empty(&s.message_id_domain) {
        Some(d) => d,
        None => s
            .from
            .rsplit('@')
            .next()
            .filter(|_| s.from.contains('@'))
            .map(|d| d.trim().trim_end_matches('>').trim().to_string())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| format!("[notify.smtp] from {:?} has no domain; set message_id_domain", s.from))?,
    };
    let mut cfg = SmtpConfig::plain(s.host.trim(), s.port, s.from.trim(), &domain);
    cfg.security = s.security;
    cfg.username = non_empty(&s.username);
    cfg.password = s.password.as_ref().map(|p| p.0.clone());
    cfg.reply_to = non_empty(&s.reply_to);
    if let Some(h) = non_empty(&s.hello_name) {
        cfg.hello_name = h;
    }
    cfg.step_timeout = Duration::from_millis(s.step_timeout_ms.max(1));
    if cfg.host.is_empty() {
        return Err("[notify.smtp] host is empty".into());
    }
    SmtpAdapter::new(cfg, sender).map_err(|e| format!("[notify.smtp] {e}"))
}

/// The adapters `[notify]` configures (creating the letter directory), or an
/// error saying what is wrong. Empty when nothing is configured.
pub fn adapters(s: &NotifySettings) -> Result<Adapters, String> {
    let mut out = Adapters::default();
    if !s.enabled() {
        return Ok(out);
    }
    let sender = sender_of(&s.sender);
    if sender.organisation.is_empty() || sender.phone.is_empty() {
        return Err("[notify.sender] needs organisation and phone (patients are told whom to call)".into());
    }
    if let Some(smtp) = &s.smtp {
        out.email = Some(Arc::new(smtp_adapter(smtp, sender.clone())?) as Arc<dyn Adapter>);
    }
    if let Some(g) = &s.govuk {
        let key = ApiKey::parse(&g.api_key.0).map_err(|e| format!("[notify.govuk] api_key: {e}"))?;
        let mut cfg = NotifyConfig::new(g.base_url.trim(), key);
        cfg.connect_timeout = Duration::from_millis(g.connect_timeout_ms.max(1));
        cfg.request_timeout = Duration::from_millis(g.request_timeout_ms.max(1));
        let client = Arc::new(NotifyClient::new(cfg).map_err(|e| format!("[notify.govuk] base_url: {e}"))?);
        let adapter =
            |kind: NotifyKind| Arc::new(NotifyAdapter::new(client.clone(), kind, sender.clone())) as Arc<dyn Adapter>;
        let mut any = false;
        if let Some(t) = non_empty(&g.sms_template) {
            out.sms = Some(adapter(NotifyKind::Sms {
                template_id: t,
                sms_sender_id: non_empty(&g.sms_sender_id),
            }));
            any = true;
        }
        if let Some(t) = non_empty(&g.email_template) {
            if out.email.is_none() {
                out.email = Some(adapter(NotifyKind::Email {
                    template_id: t,
                    email_reply_to_id: non_empty(&g.email_reply_to_id),
                }));
            }
            any = true;
        }
        let (second, first) = (
            non_empty(&g.letter_template_second_class),
            non_empty(&g.letter_template_first_class),
        );
        let letter_kind = match (second.clone().or(first.clone()), first.or(second)) {
            (Some(second), Some(first)) => Some(NotifyKind::Letter {
                second_class_template_id: second,
                first_class_template_id: first,
            }),
            _ if g.precompiled_letters => Some(NotifyKind::PrecompiledLetter),
            _ => None,
        };
        if let Some(kind) = letter_kind {
            if s.letters.is_none() {
                if kind == NotifyKind::PrecompiledLetter && sender.return_address.is_empty() {
                    return Err("[notify.sender] return_address is needed for letters".into());
                }
                out.letter = Some(adapter(kind));
            }
            any = true;
        }
        if !any {
            return Err(
                "[notify.govuk] sends nothing: give sms_template, email_template, letter templates or precompiled_letters = true"
                    .into(),
            );
        }
    }
    if let Some(l) = &s.letters {
        if l.dir.as_os_str().is_empty() {
            return Err("[notify.letters] dir is empty".into());
        }
        if sender.return_address.is_empty() {
            return Err("[notify.sender] return_address is needed for letters".into());
        }
        let dir = LetterDirectory::new(&l.dir, sender.clone())
            .map_err(|e| format!("[notify.letters] cannot create {}: {e}", l.dir.display()))?;
        out.letter = Some(Arc::new(dir) as Arc<dyn Adapter>);
    }
    Ok(out)
}

/// The worker's policy from `[notify]` and `[outage]`, validated.
pub fn worker_policy(s: &NotifySettings, outage: &OutageSettings, worker_id: &str) -> Result<WorkerPolicy, String> {
    let mut p = WorkerPolicy::new(worker_id);
    p.poll_interval = Duration::from_millis(s.poll_interval_ms.max(1));
    p.batch_size = s.batch_size;
    p.concurrency = s.concurrency;
    p.retry = RetryPolicy {
        max_attempts: s.max_attempts,
        base_delay_ms: s.retry_base_ms.max(0),
        max_delay_ms: s.retry_max_ms.max(s.retry_base_ms.max(0)),
        ..RetryPolicy::default()
    };
    p.send_timeout = Duration::from_millis(s.send_timeout_ms.max(1));
    p.claim_stale_after = Duration::from_millis(s.claim_stale_after_ms);
    p.contact = contact_policy(outage);
    p.validate().map_err(|e| format!("[notify] {e}"))?;
    Ok(p)
}

/// Check `[notify]` before the node starts.
pub fn validate(s: &NotifySettings, outage: &OutageSettings) -> Result<(), String> {
    if !s.enabled() {
        return Ok(());
    }
    adapters(s)?;
    worker_policy(s, outage, "check").map(|_| ())
}

// ---------------------------------------------------------------------------
// Communication -> OutboxItem

fn store_err(e: FhirError) -> StoreError {
    StoreError::Other(
        e.issues
            .first()
            .map(|i| i.diagnostics.clone())
            .unwrap_or_else(|| "store error".into()),
    )
}

fn ms_of(v: &Value) -> Option<i64> {
    instant_ms(v)
}

fn postage_code(p: Postage) -> &'static str {
    match p {
        Postage::First => "first",
        Postage::Second => "second",
    }
}

fn postage_of(code: Option<&str>) -> Option<Postage> {
    match code? {
        "first" => Some(Postage::First),
        "second" => Some(Postage::Second),
        _ => None,
    }
}

/// The channel in `medium` (postage from the letter-postage extension).
fn medium_channel(c: &Value) -> Option<Channel> {
    let postage = postage_of(ext(c, codes::EXT_LETTER_POSTAGE).and_then(|e| e["valueCode"].as_str()));
    Channel::from_code(channel_of(c)?, postage)
}

fn sub<'v>(e: &'v Value, url: &str) -> Option<&'v Value> {
    e["extension"].as_array()?.iter().find(|x| x["url"] == url)
}

fn claim_of(c: &Value) -> Option<Claim> {
    let e = ext(c, EXT_CLAIM)?;
    let s = |url: &str, key: &str| sub(e, url).and_then(|x| x[key].as_str()).map(str::to_string);
    let postage = postage_of(sub(e, "postage").and_then(|x| x["valueCode"].as_str()));
    Some(Claim {
        id: s("id", "valueString").unwrap_or_default(),
        worker: s("worker", "valueString").unwrap_or_default(),
        at_ms: sub(e, "at").and_then(|x| ms_of(&x["valueInstant"]))?,
        channel: Channel::from_code(&s("channel", "valueCode")?, postage)?,
        attempt: sub(e, "attempt")
            .and_then(|x| x["valueUnsignedInt"].as_u64())
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32,
    })
}

fn reason_of(c: &Value) -> (Option<String>, String) {
    let r = &c["statusReason"];
    let code = r["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["system"] == STATUS_REASON_SYSTEM)
        .and_then(|x| x["code"].as_str())
        .map(str::to_string);
    (code, r["text"].as_str().unwrap_or("").to_string())
}

fn staff_reason(code: &str) -> Option<StaffReason> {
    Some(match code {
        "phone-call" => StaffReason::PhoneCall,
        "no-contact-details" => StaffReason::NoContactDetails,
        "delivery-unknown" => StaffReason::DeliveryUnknown,
        "channel-unavailable" => StaffReason::ChannelUnavailable,
        _ => return None,
    })
}

/// An outbox Communication, read without joining anything.
#[derive(Debug, Clone)]
struct Record {
    json: Value,
    id: String,
    version: String,
    /// None: a status the worker does not handle (`stopped`, `entered-in-error`, ...).
    state: Option<ItemState>,
    /// From `medium`; None if it carries no Hale channel.
    channel: Option<Channel>,
    attempts: u32,
    next_attempt_ms: Option<i64>,
    maybe_sent: bool,
    last_claim: Option<Claim>,
    patient: Option<String>,
    new_appointment: Option<String>,
    old_appointment: Option<String>,
}

fn record_of(c: &Value) -> Option<Record> {
    let id = c["id"].as_str()?.to_string();
    let version = c["meta"]["versionId"].as_str().unwrap_or("").to_string();
    let channel = medium_channel(c);
    let (reason, text) = reason_of(c);
    let state = match c["status"].as_str()? {
        "preparation" => Some(ItemState::Ready),
        "in-progress" => Some(ItemState::InProgress),
        "completed" => Some(ItemState::Completed),
        "on-hold" => Some(ItemState::WaitingForStaff {
            reason: reason.as_deref().and_then(staff_reason).unwrap_or(match channel {
                Some(Channel::PhoneCall) => StaffReason::PhoneCall,
                Some(Channel::StaffList) => StaffReason::NoContactDetails,
                _ => StaffReason::ChannelUnavailable,
            }),
            detail: text,
        }),
        "not-done" => Some(ItemState::Failed {
            error: if text.is_empty() { "not sent".into() } else { text },
        }),
        _ => None,
    };
    let patient = c["subject"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .map(str::to_string)
        .or_else(|| refs_of(&c["recipient"], "Patient").first().map(|s| s.to_string()));
    let appts = refs_of(&c["about"], "Appointment");
    Some(Record {
        state,
        channel,
        attempts: ext(c, EXT_ATTEMPTS)
            .and_then(|e| e["valueUnsignedInt"].as_u64())
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32,
        next_attempt_ms: ext(c, EXT_NEXT_ATTEMPT).and_then(|e| ms_of(&e["valueInstant"])),
        maybe_sent: ext(c, EXT_MAYBE_SENT).is_some_and(|e| e["valueBoolean"] == true),
        last_claim: claim_of(c),
        patient,
        new_appointment: appts.first().map(|s| s.to_string()),
        old_appointment: appts.get(1).map(|s| s.to_string()),
        id,
        version,
        json: c.clone(),
    })
}

impl Record {
    /// Due now by the `pending` contract.
    fn is_due(&self, q: &PendingQuery) -> bool {
        match self.state {
            Some(ItemState::Ready) => self.next_attempt_ms.is_none_or(|t| t <= q.now_ms),
            Some(ItemState::InProgress) => self.last_claim.as_ref().is_none_or(|c| c.at_ms < q.claimed_before_ms),
            _ => false,
        }
    }
}

/// A person's name for an envelope: `text`, or given names and family.
fn human_name(names: &Value, with_prefix: bool) -> Option<String> {
    let list = names.as_array()?;
    let pick = ["usual", "official"]
        .iter()
        .find_map(|u| list.iter().find(|n| n["use"] == *u))
        .or_else(|| list.iter().find(|n| n["use"] != "old"))
        .or(list.first())?;
    if let Some(t) = pick["text"].as_str().map(str::trim).filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    let words = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut parts = if with_prefix {
        words(&pick["prefix"])
    } else {
        Vec::new()
    };
    parts.extend(words(&pick["given"]));
    if let Some(f) = pick["family"].as_str().map(str::trim).filter(|f| !f.is_empty()) {
        parts.push(f.to_string());
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn is_mobile(t: &Value, value: &str) -> bool {
    let digits: String = value.chars().filter(|ch| ch.is_ascii_digit() || *ch == '+').collect();
    t["use"] == "mobile" || t["system"] == "sms" || digits.starts_with("07") || digits.starts_with("+447")
}

/// How to reach a patient, read the way `$rebook` chose the channel: current
/// (no period end) telecom by rank, and the first address that is not `old`.
fn recipient_of(patient_id: &str, p: Option<&Value>) -> Recipient {
    let mut r = Recipient {
        patient_id: patient_id.to_string(),
        ..Recipient::default()
    };
    let Some(p) = p else {
        r.name = "Patient".into();
        return r;
    };
    r.name = human_name(&p["name"], false).unwrap_or_else(|| "Patient".into());
    r.nhs_number = p["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == codes::NHS_NUMBER_SYSTEM)
        .and_then(|i| i["value"].as_str())
        .map(str::to_string);
    let mut telecom: Vec<&Value> = p["telecom"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| !t["period"]["end"].is_string())
        .filter(|t| t["value"].as_str().is_some_and(|v| !v.trim().is_empty()))
        .collect();
    telecom.sort_by_key(|t| t["rank"].as_u64().unwrap_or(u64::MAX));
    for t in telecom {
        let value = t["value"].as_str().unwrap_or("").trim().to_string();
        match t["system"].as_str() {
            Some("phone") | Some("sms") => {
                if is_mobile(t, &value) {
                    if r.mobile.is_none() {
                        r.mobile = Some(value);
                    } else if r.phone.is_none() {
                        r.phone = Some(value);
                    }
                } else if r.phone.is_none() {
                    r.phone = Some(value);
                }
            }
            Some("email") if r.email.is_none() => r.email = Some(value),
            _ => {}
        }
    }
    let text = |v: &Value| v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    r.address = p["address"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["use"] != "old" && !a["period"]["end"].is_string())
        .map(|a| PostalAddress {
            line: a["line"].as_array().into_iter().flatten().filter_map(text).collect(),
            city: text(&a["city"]),
            district: text(&a["district"]),
            postal_code: text(&a["postalCode"]),
            country: text(&a["country"]),
        })
        .next();
    r
}

/// Reads that `pending` and the staff lists join, cached for one pass.
struct Joiner<'a> {
    app: &'a App,
    resources: HashMap<(&'static str, String), Option<Value>>,
}

impl<'a> Joiner<'a> {
    fn new(app: &'a App) -> Joiner<'a> {
        Joiner {
            app,
            resources: HashMap::new(),
        }
    }

    fn get(&mut self, rt: &'static str, id: &str) -> Result<Option<&Value>, StoreError> {
        let key = (rt, id.to_string());
        if !self.resources.contains_key(&key) {
            let v = read_json(self.app, rt, id).map_err(store_err)?.map(|(v, _)| v);
            self.resources.insert(key.clone(), v);
        }
        Ok(self.resources.get(&key).and_then(Option::as_ref))
    }

    /// `Location.name`, with the name of the Location it is part of.
    fn location(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let Some(loc) = self.get("Location", id)?.cloned() else {
            return Ok(None);
        };
        let name = loc["name"].as_str().map(str::trim).filter(|n| !n.is_empty());
        let parent = match loc["partOf"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Location/"))
        {
            Some(pid) => self
                .get("Location", pid)?
                .and_then(|p| p["name"].as_str())
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            None => None,
        };
        Ok(match (name, parent) {
            (Some(n), Some(p)) if n != p => Some(format!("{n}, {p}")),
            (Some(n), _) => Some(n.to_string()),
            (None, p) => p,
        })
    }

    fn practitioner(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get("Practitioner", id)?.and_then(|p| human_name(&p["name"], true)))
    }

    /// The new appointment's start, for ordering (None when it has none or is gone).
    fn start_of(&mut self, appointment: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get("Appointment", appointment)?.and_then(|a| ms_of(&a["start"])))
    }

    /// The new appointment is cancelled, removed or has no start: nothing to tell.
    fn appointment_gone(&mut self, r: &Record) -> Result<bool, StoreError> {
        let Some(id) = &r.new_appointment else {
            return Ok(true);
        };
        Ok(match self.get("Appointment", id)? {
            None => true,
            Some(a) => GONE_STATUSES.iter().any(|s| a["status"] == *s) || ms_of(&a["start"]).is_none(),
        })
    }

    fn appointment_info(&mut self, r: &Record) -> Result<AppointmentInfo, StoreError> {
        let mut info = AppointmentInfo {
            id: r.new_appointment.clone().unwrap_or_default(),
            previous_id: r.old_appointment.clone(),
            ..AppointmentInfo::default()
        };
        let outage =
            ext(&r.json, codes::EXT_OUTAGE_INCIDENT).is_some() || !refs_of(&r.json["about"], "Basic").is_empty();
        if outage {
            info.reason = Some("an IT outage at the hospital".into());
        }
        if let Some(old) = &r.old_appointment {
            info.previous_start_ms = self.get("Appointment", old)?.and_then(|a| ms_of(&a["start"]));
        }
        let Some(a) = r
            .new_appointment
            .as_deref()
            .map(|id| self.get("Appointment", id))
            .transpose()?
            .flatten()
            .cloned()
        else {
            return Ok(info);
        };
        info.start_ms = ms_of(&a["start"]).unwrap_or(0);
        info.end_ms = ms_of(&a["end"]);
        let concept = |c: &Value| -> Option<String> {
            c["text"]
                .as_str()
                .or_else(|| {
                    c["coding"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find_map(|x| x["display"].as_str())
                })
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let service_type = match &a["serviceType"] {
            Value::Array(list) => list.iter().find_map(concept),
            o @ Value::Object(_) => concept(o),
            _ => None,
        };
        let category = a["serviceCategory"].as_array().into_iter().flatten().find_map(concept);
        info.service = service_type
            .or_else(|| a["description"].as_str().map(str::to_string))
            .or(category)
            .unwrap_or_else(|| "Hospital appointment".into());
        for l in participants(&a, "Location") {
            if let Some(name) = self.location(l)? {
                info.location = name;
                break;
            }
        }
        for p in participants(&a, "Practitioner") {
            if let Some(name) = self.practitioner(p)? {
                info.practitioner = Some(name);
                break;
            }
        }
        Ok(info)
    }

    /// The record flattened with its patient and appointments. A record without a
    /// Hale channel gets the one `choose_channel` picks now.
    fn item(&mut self, r: &Record, now_ms: i64, policy: &ContactPolicy) -> Result<OutboxItem, StoreError> {
        let patient = match &r.patient {
            Some(id) => self.get("Patient", id)?.cloned(),
            None => None,
        };
        let recipient = recipient_of(r.patient.as_deref().unwrap_or(""), patient.as_ref());
        let appointment = self.appointment_info(r)?;
        let channel = r.channel.unwrap_or_else(|| {
            Channel::from(choose_channel(
                now_ms,
                appointment.start_ms,
                &recipient.contact(),
                policy,
            ))
        });
        Ok(OutboxItem {
            id: r.id.clone(),
            version: r.version.clone(),
            channel,
            state: r.state.clone().unwrap_or(ItemState::Ready),
            attempts: r.attempts,
            next_attempt_ms: r.next_attempt_ms,
            maybe_sent: r.maybe_sent,
            last_claim: r.last_claim.clone(),
            recipient,
            appointment,
        })
    }
}

// ---------------------------------------------------------------------------
// OutboxItem changes -> Communication

fn channel_display(code: &str) -> &str {
    codes::NOTIFICATION_CHANNELS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(code, |(_, d)| *d)
}

fn participation_mode(ch: Channel) -> Option<(&'static str, &'static str)> {
    match ch {
        Channel::Letter { .. } => Some(("MAILWRIT", "mail")),
        Channel::Email => Some(("EMAILWRIT", "email")),
        Channel::PhoneCall => Some(("PHONE", "telephone")),
        _ => None,
    }
}

/// `medium` and the letter extensions for `ch` (what `$rebook` writes).
fn set_channel(c: &mut Value, ch: Channel, at_ms: i64, calendar: &Calendar) {
    let code = ch.code();
    let display = channel_display(code);
    let mut coding = vec![json!({"system": codes::NOTIFICATION_CHANNEL_SYSTEM, "code": code, "display": display})];
    if let Some((mode, d)) = participation_mode(ch) {
        coding.push(json!({"system": PARTICIPATION_MODE_SYSTEM, "code": mode, "display": d}));
    }
    c["medium"] = json!([{"coding": coding, "text": display}]);
    match ch {
        Channel::Letter { postage } => {
            set_ext(
                c,
                codes::EXT_LETTER_POSTAGE,
                json!({"url": codes::EXT_LETTER_POSTAGE, "valueCode": postage_code(postage)}),
            );
            let delivered = letter_timeline(at_ms, postage, calendar).delivered;
            set_ext(
                c,
                codes::EXT_LETTER_EXPECTED_DELIVERY,
                json!({"url": codes::EXT_LETTER_EXPECTED_DELIVERY, "valueDate": delivered.to_string()}),
            );
        }
        _ => drop_exts(c, &[codes::EXT_LETTER_POSTAGE, codes::EXT_LETTER_EXPECTED_DELIVERY]),
    }
}

fn add_note(c: &mut Value, at_ms: i64, text: String) {
    let obj = c.as_object_mut().expect("resources are objects");
    let notes = obj.entry("note").or_insert_with(|| json!([]));
    if !notes.is_array() {
        *notes = json!([]);
    }
    let list = notes.as_array_mut().expect("array");
    list.push(json!({"authorString": ACTOR_USER, "time": instant(at_ms), "text": text}));
    if list.len() > NOTES_MAX {
        let extra = list.len() - NOTES_MAX;
        list.drain(..extra);
    }
}

fn set_reason(c: &mut Value, code: &str, text: &str) {
    let mut r = json!({"coding": [{"system": STATUS_REASON_SYSTEM, "code": code}]});
    if !text.trim().is_empty() {
        r["text"] = json!(text);
    }
    c["statusReason"] = r;
}

/// The claim written on a record: status `in-progress` and the claim extension.
pub fn apply_claim(c: &mut Value, claim: &Claim) {
    c["status"] = json!("in-progress");
    let mut parts = Vec::new();
    if !claim.id.is_empty() {
        parts.push(json!({"url": "id", "valueString": claim.id}));
    }
    if !claim.worker.is_empty() {
        parts.push(json!({"url": "worker", "valueString": claim.worker}));
    }
    parts.push(json!({"url": "at", "valueInstant": instant(claim.at_ms)}));
    parts.push(json!({"url": "channel", "valueCode": claim.channel.code()}));
    if let Channel::Letter { postage } = claim.channel {
        parts.push(json!({"url": "postage", "valueCode": postage_code(postage)}));
    }
    parts.push(json!({"url": "attempt", "valueUnsignedInt": claim.attempt}));
    set_ext(c, EXT_CLAIM, json!({"url": EXT_CLAIM, "extension": parts}));
}

/// An outcome written on a record: status from [`DeliveryOutcome::fhir_status`],
/// attempts, retry time and "maybe sent", the channel actually used, `sent` and
/// the provider's id on success, `statusReason` otherwise, and a note.
pub fn apply_outcome(c: &mut Value, o: &DeliveryOutcome, calendar: &Calendar) {
    c["status"] = json!(o.fhir_status());
    set_ext(
        c,
        EXT_ATTEMPTS,
        json!({"url": EXT_ATTEMPTS, "valueUnsignedInt": o.attempts}),
    );
    drop_exts(c, &[EXT_NEXT_ATTEMPT, EXT_MAYBE_SENT]);
    let sent_letter = matches!(o.status, OutcomeStatus::Sent { .. }) && matches!(o.channel, Channel::Letter { .. });
    if medium_channel(c) != Some(o.channel) || sent_letter {
        set_channel(c, o.channel, o.at_ms, calendar);
    }
    let via = o.channel.code();
    match &o.status {
        OutcomeStatus::Sent { receipt } => {
            c["sent"] = json!(instant(o.at_ms));
            if let Some(obj) = c.as_object_mut() {
                obj.remove("statusReason");
            }
            if let Some(rid) = receipt.id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                let list = c
                    .as_object_mut()
                    .expect("object")
                    .entry("identifier")
                    .or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                let list = list.as_array_mut().expect("array");
                if !list
                    .iter()
                    .any(|i| i["system"] == RECEIPT_ID_SYSTEM && i["value"] == rid)
                {
                    list.push(json!({
                        "use": "secondary",
                        "type": {"text": format!("{} receipt", receipt.provider)},
                        "system": RECEIPT_ID_SYSTEM,
                        "value": rid,
                    }));
                }
            }
            add_note(
                c,
                o.at_ms,
                format!(
                    "Sent by {} ({via}), attempt {}: {}",
                    receipt.provider, o.attempts, receipt.detail
                ),
            );
        }
        OutcomeStatus::Retry {
            next_attempt_ms,
            error,
            maybe_sent,
        } => {
            set_ext(
                c,
                EXT_NEXT_ATTEMPT,
                json!({"url": EXT_NEXT_ATTEMPT, "valueInstant": instant(*next_attempt_ms)}),
            );
            if *maybe_sent {
                set_ext(c, EXT_MAYBE_SENT, json!({"url": EXT_MAYBE_SENT, "valueBoolean": true}));
            }
            set_reason(c, "retry", error);
            add_note(
                c,
                o.at_ms,
                format!(
                    "Attempt {} ({via}) did not go through{}; next attempt at {}: {error}",
                    o.attempts,
                    if *maybe_sent {
                        " and may have reached the provider (checked before any resend)"
                    } else {
                        ""
                    },
                    instant(*next_attempt_ms)
                ),
            );
        }
        OutcomeStatus::Failed { error } => {
            set_reason(c, "delivery-failed", error);
            add_note(c, o.at_ms, format!("Not sent ({via}): {error}"));
        }
        OutcomeStatus::WaitingForStaff { reason, detail } => {
            set_reason(c, reason.code(), detail);
            add_note(c, o.at_ms, format!("For staff ({}): {detail}", reason.code()));
        }
    }
}

fn stop_record(c: &mut Value, at_ms: i64) {
    c["status"] = json!("stopped");
    let why = "the rebooked appointment was cancelled or removed before the patient was told; nothing was sent";
    set_reason(c, "appointment-cancelled", why);
    drop_exts(c, &[EXT_NEXT_ATTEMPT, EXT_MAYBE_SENT]);
    add_note(c, at_ms, format!("Stopped: {why}"));
}

// ---------------------------------------------------------------------------
// The Outbox over this node's store

/// `Communication.category` of outbox records, as a search value.
fn category_param() -> String {
    format!(
        "{}|{}",
        codes::NOTIFICATION_CATEGORY_SYSTEM,
        codes::NOTIFICATION_APPOINTMENT_REBOOKED
    )
}

/// What one `pending` scan found.
struct Scan {
    items: Vec<OutboxItem>,
    /// Ready records whose appointment is gone: (id, version) to mark `stopped`.
    stop: Vec<(String, String)>,
}

/// Communication id -> (appointment id, its start).
type Starts = Mutex<HashMap<String, (String, Option<i64>)>>;

/// Read the outbox: due records, earliest appointment first, joined.
fn scan(app: &App, starts: &Starts, contact: &ContactPolicy, q: PendingQuery) -> Result<Scan, StoreError> {
    let comms = search_all(
        app,
        ResourceType::Communication,
        &[
            ("category", category_param()),
            ("status", "preparation,in-progress".into()),
        ],
    )
    .map_err(store_err)?;
    let records: Vec<Record> = comms.iter().filter_map(record_of).collect();
    let mut joiner = Joiner::new(app);
    let mut due: Vec<(Option<i64>, Record)> = Vec::new();
    {
        let mut starts = starts.lock();
        let live: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        starts.retain(|id, _| live.contains(id.as_str()));
        for r in records.iter().filter(|r| r.is_due(&q)) {
            let appt = r.new_appointment.clone().unwrap_or_default();
            let start = match starts.get(&r.id) {
                Some((a, s)) if *a == appt && s.is_some() => *s,
                _ => {
                    let s = if appt.is_empty() { None } else { joiner.start_of(&appt)? };
                    starts.insert(r.id.clone(), (appt, s));
                    s
                }
            };
            due.push((start, r.clone()));
        }
    }
    // Earliest appointment first; records without one first of all (they are
    // stopped or checked, which is quick).
    due.sort_by(|a, b| (a.0.unwrap_or(i64::MIN), &a.1.id).cmp(&(b.0.unwrap_or(i64::MIN), &b.1.id)));
    due.truncate(q.limit);
    let mut scan = Scan {
        items: Vec::with_capacity(due.len()),
        stop: Vec::new(),
    };
    for (_, r) in due {
        if r.state == Some(ItemState::Ready) && joiner.appointment_gone(&r)? {
            scan.stop.push((r.id.clone(), r.version.clone()));
            continue;
        }
        scan.items.push(joiner.item(&r, q.now_ms, contact)?);
    }
    Ok(scan)
}

/// [`hale_notify::Outbox`] over this node's outbox `Communication`s.
pub struct ServerOutbox {
    app: Arc<App>,
    contact: ContactPolicy,
    actor: Actor,
    /// Communication id -> (appointment id, start): orders due records without
    /// re-reading every appointment on every pass. Only ordering uses it.
    starts: Arc<Starts>,
}

impl ServerOutbox {
    pub fn new(app: Arc<App>) -> ServerOutbox {
        let contact = contact_policy(&app.cfg.outage);
        ServerOutbox {
            app,
            contact,
            actor: Actor {
                user: ACTOR_USER.into(),
                role: Role::Service.as_str().into(),
            },
            starts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// This node leads the cluster: only the leader delivers.
    pub fn is_leader(&self) -> bool {
        self.app.raft.metrics().current_leader == Some(self.app.raft.id)
    }

    /// Change Communication `id` with `f` if it is still at `version`.
    async fn write(&self, id: &str, version: &str, f: impl FnOnce(&mut Value)) -> Result<u64, StoreError> {
        let Ok(expected) = version.parse::<u64>() else {
            return Err(StoreError::Conflict);
        };
        let Some((mut c, current)) = read_json(&self.app, "Communication", id).map_err(store_err)? else {
            return Err(StoreError::Gone);
        };
        if current != expected {
            return Err(StoreError::Conflict);
        }
        f(&mut c);
        if let Err(issues) = hale_fhir::validate::validate_resource(&c, Some(ResourceType::Communication)) {
            let why = issues.first().map(|i| i.diagnostics.clone()).unwrap_or_default();
            tracing::error!(communication = id, error = %why, "an outbox write would be invalid (a bug)");
            return Err(StoreError::Other(format!(
                "the updated Communication/{id} is invalid: {why}"
            )));
        }
        let cmd = Command {
            references: Default::default(),
            time_ms: crate::now_ms(),
            actor: self.actor.clone(),
            kind: CommandKind::Write(WriteOp::Update {
                rtype: "Communication".into(),
                id: id.to_string(),
                resource: c,
                if_match: Some(expected),
            }),
        };
        let applied = self
            .app
            .proposer
            .propose(cmd)
            .await
            .map_err(|e| StoreError::Other(format!("not committed: {e}")))?;
        match applied.1 {
            Applied::Ops(mut results) if results.len() == 1 => match results.remove(0) {
                Ok(w) => Ok(w.version),
                Err(r) => Err(match r.kind {
                    RejectKind::PreconditionFailed => match read_json(&self.app, "Communication", id) {
                        Ok(None) => StoreError::Gone,
                        _ => StoreError::Conflict,
                    },
                    RejectKind::NotFound => StoreError::Gone,
                    _ => StoreError::Other(
                        r.issues
                            .first()
                            .map(|i| i.diagnostics.clone())
                            .unwrap_or_else(|| "rejected".into()),
                    ),
                }),
            },
            _ => Err(StoreError::Other("unexpected apply result".into())),
        }
    }
}

impl Outbox for ServerOutbox {
    fn pending(&self, q: PendingQuery) -> BoxFuture<'_, Result<Vec<OutboxItem>, StoreError>> {
        Box::pin(async move {
            if self.app.stopping.load(Ordering::Acquire) || !self.is_leader() {
                return Ok(Vec::new());
            }
            let (app, starts, contact) = (self.app.clone(), self.starts.clone(), self.contact.clone());
            let scan = tokio::task::spawn_blocking(move || scan(&app, &starts, &contact, q))
                .await
                .map_err(|e| StoreError::Other(format!("reading the outbox failed: {e}")))??;
            for (id, version) in scan.stop {
                let now = crate::now_ms();
                match self.write(&id, &version, |c| stop_record(c, now)).await {
                    Ok(_) => {
                        tracing::info!(communication = %id, "notification stopped: its appointment is cancelled or gone")
                    }
                    Err(StoreError::Conflict | StoreError::Gone) => {}
                    Err(e) => tracing::warn!(communication = %id, error = %e, "could not stop a notification"),
                }
            }
            Ok(scan.items)
        })
    }

    fn claim<'a>(&'a self, item: &'a OutboxItem, claim: &'a Claim) -> BoxFuture<'a, Result<Claimed, StoreError>> {
        Box::pin(async move {
            let version = self.write(&item.id, &item.version, |c| apply_claim(c, claim)).await?;
            Ok(Claimed {
                version: version.to_string(),
            })
        })
    }

    fn record<'a>(
        &'a self,
        item: &'a OutboxItem,
        outcome: &'a DeliveryOutcome,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let calendar = &self.contact.calendar;
            self.write(&item.id, &item.version, |c| apply_outcome(c, outcome, calendar))
                .await
                .map(|_| ())
        })
    }
}

/// A running delivery worker.
pub struct WorkerHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// How long a clean stop may take (in-flight sends finish and are recorded).
    drain: Duration,
}

/// Tells a worker to stop (cloneable, for a shutdown future).
#[derive(Clone)]
pub struct WorkerStopper(tokio::sync::watch::Sender<bool>);

impl WorkerStopper {
    /// Stop starting new sends; those in flight finish and are recorded.
    pub fn signal(&self) {
        let _ = self.0.send(true);
    }
}

impl WorkerHandle {
    pub fn stopper(&self) -> WorkerStopper {
        WorkerStopper(self.stop.clone())
    }

    /// Stop starting new sends, let those in flight finish and be recorded.
    pub fn signal(&self) {
        let _ = self.stop.send(true);
    }

    /// Signal and wait (bounded); a send still running after that is abandoned
    /// and its claim is checked by the next worker.
    pub async fn stop(self) {
        self.signal();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(self.drain, self.task).await.is_err() {
            tracing::warn!("the notification worker did not stop in time; in-flight claims will be checked later");
            abort.abort();
        }
    }
}

/// Start the delivery worker if `[notify]` configures an adapter. It delivers
/// only while this node leads the cluster.
pub fn spawn_worker(app: Arc<App>) -> Option<WorkerHandle> {
    let settings = &app.cfg.notify;
    if !settings.enabled() {
        return None;
    }
    let built = adapters(settings)
        .and_then(|a| worker_policy(settings, &app.cfg.outage, &format!("node-{}", app.raft.id)).map(|p| (a, p)));
    let (adapters, policy) = match built {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "patient notifications are NOT being sent: bad [notify] configuration");
            return None;
        }
    };
    let channels: Vec<String> = [
        ("letter", adapters.letter.as_ref()),
        ("sms", adapters.sms.as_ref()),
        ("email", adapters.email.as_ref()),
    ]
    .into_iter()
    .filter_map(|(c, a)| a.map(|a| format!("{c} by {}", a.name())))
    .collect();
    tracing::info!(channels = ?channels, "notification worker started (delivers while this node leads)");
    let drain = policy.send_timeout + 2 * policy.store_timeout + Duration::from_secs(5);
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let outbox: Arc<dyn Outbox> = Arc::new(ServerOutbox::new(app));
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        match hale_notify::run_worker(outbox, adapters, policy, Arc::new(SystemClock), shutdown).await {
            Ok(total) => tracing::info!(
                sent = total.sent,
                retries = total.retry_scheduled,
                failed = total.failed,
                for_staff = total.waiting_for_staff,
                "notification worker stopped"
            ),
            Err(e) => tracing::error!(error = %e, "notification worker could not start"),
        }
    });
    Some(WorkerHandle { stop, task, drain })
}

// ---------------------------------------------------------------------------
// Staff lists

const LISTS: [&str; 3] = ["phone-calls", "no-contact-details", "check-delivery"];

/// Records staff must act on, as outbox items: on hold or not done, and phone-call or
/// staff-list records not yet processed. `incident` narrows to one incident's.
/// Records whose appointment is cancelled or gone are left out.
pub fn staff_items(app: &App, incident: Option<&str>) -> Result<Vec<OutboxItem>, StoreError> {
    let mut base = vec![("category", category_param())];
    if let Some(i) = incident {
        base.push(("about", format!("Basic/{i}")));
    }
    let channels = ["phone-call", "staff-list"]
        .iter()
        .map(|c| format!("{}|{c}", codes::NOTIFICATION_CHANNEL_SYSTEM))
        .collect::<Vec<_>>()
        .join(",");
    let mut held = base.clone();
    held.push(("status", "on-hold,not-done".into()));
    let mut waiting = base;
    waiting.push(("status", "preparation,in-progress".into()));
    waiting.push(("medium", channels));
    let mut comms = search_all(app, ResourceType::Communication, &held).map_err(store_err)?;
    comms.extend(search_all(app, ResourceType::Communication, &waiting).map_err(store_err)?);
    let now = crate::now_ms();
    let policy = contact_policy(&app.cfg.outage);
    let mut joiner = Joiner::new(app);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for r in comms.iter().filter_map(record_of) {
        if !seen.insert(r.id.clone()) || joiner.appointment_gone(&r)? {
            continue;
        }
        out.push(joiner.item(&r, now, &policy)?);
    }
    Ok(out)
}

fn csv(lists: &StaffLists, which: &[&str]) -> String {
    let header = hale_notify::staff::to_csv(&[]);
    let mut out = format!("list,{header}");
    for (name, entries) in LISTS
        .iter()
        .zip([&lists.phone_calls, &lists.no_contact_details, &lists.check_delivery])
    {
        if !which.contains(name) {
            continue;
        }
        for e in entries {
            let one = hale_notify::staff::to_csv(std::slice::from_ref(e));
            out.push_str(name);
            out.push(',');
            out.push_str(&one[header.len()..]);
        }
    }
    out
}

fn staff_error(status: StatusCode, code: IssueCode, msg: impl Into<String>) -> Response {
    FhirError::new(status, code, msg).into_response()
}

/// `GET /Communication/$staff-lists[?list=phone-calls|no-contact-details|check-delivery]
/// [&incident=<Basic id>][&_format=csv|json]`: the staff lists (admin or service).
pub async fn staff_lists(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let started = std::time::Instant::now();
    let resp = staff_lists_inner(&app, &headers, query.as_deref().unwrap_or("")).await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(r) => r,
    };
    crate::consistency::node_headers(&app, resp.headers_mut());
    app.metrics
        .observe("ops", resp.status().as_u16(), started.elapsed().as_micros() as u64);
    resp
}

async fn staff_lists_inner(app: &Arc<App>, headers: &HeaderMap, query: &str) -> Result<Response, Response> {
    let principal: Principal = app
        .auth
        .authenticate(headers)
        .await
        .map_err(IntoResponse::into_response)?;
    if !matches!(principal.role, Role::Admin | Role::Service) {
        return Err(staff_error(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            format!(
                "user '{}' with role '{}' may not read the staff lists; they need an admin or service token",
                principal.user,
                principal.role.as_str()
            ),
        ));
    }
    let mut json_out = false;
    let mut which: Vec<&str> = LISTS.to_vec();
    let mut incident: Option<String> = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("_format", "csv" | "text/csv") => json_out = false,
            ("_format", "json" | "application/json") => json_out = true,
            ("list", "all") => which = LISTS.to_vec(),
            ("list", l) if LISTS.contains(&l) => which = LISTS.iter().copied().filter(|x| *x == l).collect(),
            ("incident", i) if !i.is_empty() && i.len() <= crate::outage::INCIDENT_ID_BYTES_MAX => {
                incident = Some(i.trim_start_matches("Basic/").to_string())
            }
            (k, v) => {
                return Err(FhirError::bad_request(format!(
                    "{k}={v} is not understood here; use list=phone-calls|no-contact-details|check-delivery|all, \
                     incident=<Basic id> and _format=csv|json"
                ))
                .at(k.to_string())
                .into_response())
            }
        }
    }
    let level = crate::consistency::requested(headers).map_err(IntoResponse::into_response)?;
    if let Err(why) = app.raft.read_barrier(level).await {
        return Err(FhirError::unavailable(why).into_response());
    }
    let app2 = app.clone();
    let inc = incident.clone();
    let items = tokio::task::spawn_blocking(move || staff_items(&app2, inc.as_deref()))
        .await
        .map_err(|e| FhirError::internal(format!("reading the staff lists failed: {e}")).into_response())?
        .map_err(|e| FhirError::internal(e.to_string()).into_response())?;
    let mut lists = hale_notify::staff_lists(&items);
    if !which.contains(&"phone-calls") {
        lists.phone_calls.clear();
    }
    if !which.contains(&"no-contact-details") {
        lists.no_contact_details.clear();
    }
    if !which.contains(&"check-delivery") {
        lists.check_delivery.clear();
    }
    let patients: Vec<&str> = lists
        .phone_calls
        .iter()
        .chain(&lists.no_contact_details)
        .chain(&lists.check_delivery)
        .map(|e| e.patient_id.as_str())
        .collect();
    let cx = Ctx {
        app,
        headers,
        principal: &principal,
        base: String::new(),
        gate: Default::default(),
    };
    cx.audit(
        AuditAction::Execute,
        ResourceType::Communication,
        None,
        None,
        0,
        format!(
            "GET Communication/$staff-lists{} -> {} patient(s); patients: {}",
            incident.map(|i| format!(" incident Basic/{i}")).unwrap_or_default(),
            patients.len(),
            patients.iter().take(20).copied().collect::<Vec<_>>().join(",")
        ),
    )
    .await;
    let (body, ct) = if json_out {
        (
            serde_json::to_string(&lists).unwrap_or_else(|_| "{}".into()),
            "application/json",
        )
    } else {
        (csv(&lists, &which), "text/csv; charset=utf-8")
    };
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_notify::Receipt;

    fn comm(channel: &str) -> Value {
        json!({
            "resourceType": "Communication",
            "id": "c1",
            "meta": {"versionId": "1", "lastUpdated": "2026-10-01T10:00:00.000Z",
                     "tag": [{"system": codes::TAG_SYSTEM, "code": codes::TAG_OUTAGE_NOTIFICATION}]},
            "extension": [{"url": codes::EXT_OUTAGE_INCIDENT, "valueReference": {"reference": "Basic/i1"}}],
            "identifier": [{"system": codes::NOTIFICATION_ID_SYSTEM, "value": "c1"}],
            "status": "preparation",
            "category": [{"coding": [{"system": codes::NOTIFICATION_CATEGORY_SYSTEM, "code": codes::NOTIFICATION_APPOINTMENT_REBOOKED}]}],
            "medium": [{"coding": [{"system": codes::NOTIFICATION_CHANNEL_SYSTEM, "code": channel}]}],
            "subject": {"reference": "Patient/p1"},
            "about": [{"reference": "Appointment/new"}, {"reference": "Appointment/old"}, {"reference": "Basic/i1"}],
            "recipient": [{"reference": "Patient/p1"}],
            "payload": [{"contentString": "Your appointment was rebooked."}],
        })
    }

    fn valid(c: &Value) {
        if let Err(issues) = hale_fhir::validate::validate_resource(c, Some(ResourceType::Communication)) {
            panic!("invalid: {issues:?}\n{c:#}");
        }
    }

    #[test]
    fn claim_and_outcomes_round_trip_and_stay_valid() {
        let mut c = comm("letter");
        set_ext(
            &mut c,
            codes::EXT_LETTER_POSTAGE,
            json!({"url": codes::EXT_LETTER_POSTAGE, "valueCode": "first"}),
        );
        let r = record_of(&c).unwrap();
        assert_eq!(r.state, Some(ItemState::Ready));
        assert_eq!(
            r.channel,
            Some(Channel::Letter {
                postage: Postage::First
            })
        );
        assert_eq!(r.new_appointment.as_deref(), Some("new"));
        assert_eq!(r.old_appointment.as_deref(), Some("old"));
        assert_eq!(r.patient.as_deref(), Some("p1"));

        let claim = Claim {
            id: "node-1-5-0".into(),
            worker: "node-1".into(),
            at_ms: 1_790_000_000_000,
            channel: Channel::Sms,
            attempt: 1,
        };
        apply_claim(&mut c, &claim);
        valid(&c);
        let r = record_of(&c).unwrap();
        assert_eq!(r.state, Some(ItemState::InProgress));
        assert_eq!(r.last_claim, Some(claim.clone()));

        let cal = Calendar::england_and_wales();
        let retry = DeliveryOutcome {
            at_ms: claim.at_ms + 1000,
            attempts: 1,
            channel: Channel::Sms,
            status: OutcomeStatus::Retry {
                next_attempt_ms: claim.at_ms + 120_000,
                error: "SMTP 451".into(),
                maybe_sent: true,
            },
        };
        apply_outcome(&mut c, &retry, &cal);
        valid(&c);
        let r = record_of(&c).unwrap();
        assert_eq!(r.state, Some(ItemState::Ready));
        assert_eq!(
            (r.attempts, r.next_attempt_ms, r.maybe_sent),
            (1, Some(claim.at_ms + 120_000), true)
        );
        assert_eq!(r.channel, Some(Channel::Sms), "the channel actually used is recorded");
        assert!(ext(&c, codes::EXT_LETTER_POSTAGE).is_none());

        let sent = DeliveryOutcome {
            at_ms: claim.at_ms + 200_000,
            attempts: 2,
            channel: Channel::Sms,
            status: OutcomeStatus::Sent {
                receipt: Receipt {
                    provider: "notify".into(),
                    id: Some("n-123".into()),
                    detail: "created".into(),
                },
            },
        };
        apply_outcome(&mut c, &sent, &cal);
        valid(&c);
        let r = record_of(&c).unwrap();
        assert_eq!(r.state, Some(ItemState::Completed));
        assert_eq!((r.attempts, r.next_attempt_ms, r.maybe_sent), (2, None, false));
        assert!(c["statusReason"].is_null());
        assert_eq!(c["identifier"][1]["value"], "n-123");
        assert_eq!(c["about"].as_array().unwrap().len(), 3, "about is kept");
        assert_eq!(
            c["meta"]["tag"][0]["code"],
            codes::TAG_OUTAGE_NOTIFICATION,
            "tags are kept"
        );
        assert_eq!(c["note"].as_array().unwrap().len(), 2);

        let mut held = comm("staff-list");
        apply_outcome(
            &mut held,
            &DeliveryOutcome {
                at_ms: claim.at_ms,
                attempts: 0,
                channel: Channel::StaffList,
                status: OutcomeStatus::WaitingForStaff {
                    reason: StaffReason::NoContactDetails,
                    detail: "no usable phone number, email or postal address".into(),
                },
            },
            &cal,
        );
        valid(&held);
        match record_of(&held).unwrap().state {
            Some(ItemState::WaitingForStaff { reason, .. }) => assert_eq!(reason, StaffReason::NoContactDetails),
            s => panic!("{s:?}"),
        }
        let mut stopped = comm("email");
        stop_record(&mut stopped, claim.at_ms);
        valid(&stopped);
        assert_eq!(record_of(&stopped).unwrap().state, None);
    }

    #[test]
    fn recipient_from_patient() {
        let p = json!({
            "resourceType": "Patient",
            "identifier": [{"system": codes::NHS_NUMBER_SYSTEM, "value": "9991234567"}],
            "name": [{"use": "old", "family": "Smith", "given": ["Ada"]},
                     {"use": "official", "family": "Okafor", "given": ["Ada", "May"], "prefix": ["Mrs"]}],
            "telecom": [
                {"system": "phone", "value": "0141 496 0999", "use": "home"},
                {"system": "phone", "value": "07700 900123", "rank": 1},
                {"system": "email", "value": "old@example.org", "period": {"end": "2020-01-01"}},
                {"system": "email", "value": "ada@example.org"},
            ],
            "address": [{"use": "old", "line": ["1 Old Road"], "postalCode": "G1 1AA"},
                        {"use": "home", "line": ["14 Hyndland Road"], "city": "Glasgow", "postalCode": "G12 9UX"}],
        });
        let r = recipient_of("p1", Some(&p));
        assert_eq!(r.name, "Ada May Okafor");
        assert_eq!(r.nhs_number.as_deref(), Some("9991234567"));
        assert_eq!(r.mobile.as_deref(), Some("07700 900123"));
        assert_eq!(r.phone.as_deref(), Some("0141 496 0999"));
        assert_eq!(r.email.as_deref(), Some("ada@example.org"));
        assert_eq!(r.address.as_ref().unwrap().postal_code.as_deref(), Some("G12 9UX"));
        let c = r.contact();
        assert!(c.mobile && c.email && c.phone && c.address);
        let none = recipient_of("p2", Some(&json!({"resourceType": "Patient"})));
        let c = none.contact();
        assert!(!c.mobile && !c.email && !c.phone && !c.address);
    }

    #[test]
    fn settings_off_by_default_and_checked() {
        let s = NotifySettings::default();
        assert!(!s.enabled());
        assert!(validate(&s, &OutageSettings::default()).is_ok());
        let mut s = NotifySettings {
            smtp: Some(SmtpSettings {
                host: "127.0.0.1".into(),
                port: 2525,
                security: SmtpSecurity::None,
                username: None,
                password: None,
                from: "Hale <appointments@hale.example>".into(),
                reply_to: None,
                hello_name: None,
                message_id_domain: None,
                step_timeout_ms: 1000,
            }),
            ..NotifySettings::default()
        };
        assert!(validate(&s, &OutageSettings::default())
            .unwrap_err()
            .contains("organisation"));
        s.sender.organisation = "Hale General".into();
        s.sender.phone = "0141 496 0000".into();
        validate(&s, &OutageSettings::default()).unwrap();
        let a = adapters(&s).unwrap();
        assert!(a.email.is_some() && a.sms.is_none() && a.letter.is_none());
        s.claim_stale_after_ms = 1000;
        assert!(validate(&s, &OutageSettings::default()).is_err());
        assert_eq!(format!("{:?}", Secret("key".into())), "\"<redacted>\"");
    }

    #[test]
    fn csv_has_a_list_column() {
        let lists = StaffLists::default();
        let text = csv(&lists, &LISTS);
        assert!(text.starts_with("list,appointment,name,"));
        assert_eq!(text.lines().count(), 1);
    }
}
