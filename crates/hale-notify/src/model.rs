//! What an outbox record carries, and what is recorded back on it.
//!
//! These are plain data: the server maps them to and from FHIR `Communication`
//! resources (see DESIGN.md, "Mapping to Communication"); this crate never sees
//! FHIR JSON.

use hale_sched::letters::{Contact, Postage};
use serde::{Deserialize, Serialize};

/// How one notification reaches the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "kebab-case")]
pub enum Channel {
    /// A printed letter, posted with this postage class.
    Letter {
        postage: Postage,
    },
    Sms,
    Email,
    /// Not sent: staff phone the patient.
    PhoneCall,
    /// Not sent: no usable phone, email or address; staff must find another way.
    StaffList,
}

impl Channel {
    /// The channel's code: `letter`, `sms`, `email`, `phone-call` or `staff-list`.
    pub fn code(self) -> &'static str {
        match self {
            Channel::Letter { .. } => "letter",
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::PhoneCall => "phone-call",
            Channel::StaffList => "staff-list",
        }
    }

    /// The channel for a code from [`Channel::code`]; a letter needs its postage
    /// (second class if none is given).
    pub fn from_code(code: &str, postage: Option<Postage>) -> Option<Channel> {
        Some(match code {
            "letter" => Channel::Letter {
                postage: postage.unwrap_or(Postage::Second),
            },
            "sms" => Channel::Sms,
            "email" => Channel::Email,
            "phone-call" => Channel::PhoneCall,
            "staff-list" => Channel::StaffList,
            _ => return None,
        })
    }

    /// Letters, SMS and email are sent by an adapter; phone calls and the staff
    /// list wait for staff.
    pub fn is_sent_by_adapter(self) -> bool {
        matches!(self, Channel::Letter { .. } | Channel::Sms | Channel::Email)
    }
}

impl From<hale_sched::letters::Channel> for Channel {
    fn from(c: hale_sched::letters::Channel) -> Channel {
        use hale_sched::letters::Channel as S;
        match c {
            S::Letter { postage, .. } => Channel::Letter { postage },
            S::Sms => Channel::Sms,
            S::Email => Channel::Email,
            S::PhoneCall => Channel::PhoneCall,
            S::StaffList => Channel::StaffList,
        }
    }
}

/// A postal address, shaped like FHIR `Address`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PostalAddress {
    /// `Address.line`: house, street, locality.
    pub line: Vec<String>,
    pub city: Option<String>,
    pub district: Option<String>,
    pub postal_code: Option<String>,
    /// Left off the envelope when it is the United Kingdom.
    pub country: Option<String>,
}

/// GOV.UK Notify takes at most 7 address lines (the first is the addressee).
pub const ENVELOPE_LINES_MAX: usize = 7;
/// Notify needs at least 3 (addressee, one line, postcode or country).
pub const ENVELOPE_LINES_MIN: usize = 3;

fn is_uk(country: &str) -> bool {
    matches!(
        country.trim().to_ascii_lowercase().as_str(),
        "uk" | "gb"
            | "gbr"
            | "united kingdom"
            | "great britain"
            | "england"
            | "scotland"
            | "wales"
            | "northern ireland"
    )
}

impl PostalAddress {
    fn non_empty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// The address as envelope lines: the addressee, then the street lines,
    /// city, district, postcode, and the country when it is not the UK. The
    /// last line is the postcode (or country), as Notify requires. More than
    /// [`ENVELOPE_LINES_MAX`] lines are merged from the second line on.
    pub fn envelope_lines(&self, addressee: &str) -> Vec<String> {
        let mut lines = vec![addressee.trim().to_string()];
        lines.extend(self.line.iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
        lines.extend(Self::non_empty(&self.city).map(str::to_string));
        lines.extend(Self::non_empty(&self.district).map(str::to_string));
        lines.extend(Self::non_empty(&self.postal_code).map(str::to_string));
        if let Some(country) = Self::non_empty(&self.country).filter(|c| !is_uk(c)) {
            lines.push(country.to_string());
        }
        while lines.len() > ENVELOPE_LINES_MAX {
            let second = lines.remove(2);
            lines[1] = format!("{}, {}", lines[1], second);
        }
        lines
    }

    /// Enough to post a letter: at least one street line or city, and a
    /// postcode or a country outside the UK.
    pub fn is_usable(&self) -> bool {
        let has_line = self.line.iter().any(|l| !l.trim().is_empty()) || Self::non_empty(&self.city).is_some();
        let has_last =
            Self::non_empty(&self.postal_code).is_some() || Self::non_empty(&self.country).is_some_and(|c| !is_uk(c));
        has_line && has_last
    }

    /// One line, comma separated (staff lists).
    pub fn one_line(&self) -> String {
        let lines = self.envelope_lines("");
        lines[1..].join(", ")
    }
}

/// The patient a notification is for, and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Recipient {
    /// `Patient.id`.
    pub patient_id: String,
    /// As it should appear on an envelope and in "Dear ...".
    pub name: String,
    pub nhs_number: Option<String>,
    /// A mobile number (`telecom` system `phone`, use `mobile`), for SMS.
    pub mobile: Option<String>,
    /// Any other phone number staff can call.
    pub phone: Option<String>,
    pub email: Option<String>,
    pub address: Option<PostalAddress>,
}

impl Recipient {
    fn has(s: &Option<String>) -> bool {
        s.as_deref().is_some_and(|s| !s.trim().is_empty())
    }

    /// What `hale_sched::choose_channel` needs to know.
    pub fn contact(&self) -> Contact {
        Contact {
            mobile: Self::has(&self.mobile),
            email: Self::has(&self.email),
            phone: Self::has(&self.phone) || Self::has(&self.mobile),
            address: self.address.as_ref().is_some_and(PostalAddress::is_usable),
        }
    }

    /// Numbers staff can call, mobile first.
    pub fn phones(&self) -> Vec<String> {
        [&self.mobile, &self.phone]
            .into_iter()
            .flatten()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// The new appointment (the Communication's `about`) and the one it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppointmentInfo {
    /// `Appointment.id` of the new appointment.
    pub id: String,
    /// Start, ms since the Unix epoch (UTC).
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    /// The clinic or service, e.g. "Cardiology outpatient clinic".
    pub service: String,
    /// Where: location and site, e.g. "Outpatients B, Royal Infirmary".
    pub location: String,
    pub practitioner: Option<String>,
    /// The cancelled appointment this one replaces.
    pub previous_id: Option<String>,
    pub previous_start_ms: Option<i64>,
    /// Why it was moved, for the patient, e.g. "an IT failure at the hospital".
    pub reason: Option<String>,
}

/// One claim on an item: who, when, for which channel and attempt. Stored on
/// the record when the item is claimed, so that after a crash the next worker
/// knows what may have been sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Unique per claim.
    pub id: String,
    /// The worker (node) that claimed it.
    pub worker: String,
    pub at_ms: i64,
    /// The channel this claim sends on (or checks).
    pub channel: Channel,
    /// Which send attempt this claim is for (1 for the first). A claim that
    /// only checks an earlier attempt keeps the earlier number.
    pub attempt: u32,
}

/// Where an item is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ItemState {
    /// Not yet attempted, or waiting for a retry at `next_attempt_ms`
    /// (Communication.status `preparation`).
    Ready,
    /// Claimed ([`OutboxItem::last_claim`]) and no outcome recorded yet
    /// (`in-progress`). If the claim is old, its worker died mid-send.
    InProgress,
    /// Handed to the provider (`completed`).
    Completed,
    /// Not sent; staff must act (`on-hold`).
    WaitingForStaff { reason: StaffReason, detail: String },
    /// Given up (`not-done`); staff must contact the patient another way.
    Failed { error: String },
}

/// Why an item waits for staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaffReason {
    /// No letter arrives in time and there is no mobile or email: phone the patient.
    PhoneCall,
    /// No usable phone, email or address.
    NoContactDetails,
    /// A send may or may not have happened and the provider cannot say
    /// (SMTP, or a Notify attempt too old to look up): check before resending.
    DeliveryUnknown,
    /// No adapter is configured for the channel, or the recipient lacks the
    /// detail it needs.
    ChannelUnavailable,
}

impl StaffReason {
    pub fn code(self) -> &'static str {
        match self {
            StaffReason::PhoneCall => "phone-call",
            StaffReason::NoContactDetails => "no-contact-details",
            StaffReason::DeliveryUnknown => "delivery-unknown",
            StaffReason::ChannelUnavailable => "channel-unavailable",
        }
    }
}

/// One outbox record: a FHIR `Communication` in the rebooking's outbox,
/// flattened with everything needed to send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// `Communication.id`: the idempotency key. Sent as Notify's `reference`,
    /// in the SMTP Message-ID and as the letter's file name, so it must not
    /// contain personal data.
    pub id: String,
    /// `Communication.meta.versionId`; every claim and record is conditional on
    /// it (If-Match), so only one worker on one node wins.
    pub version: String,
    /// The channel chosen when the appointment was rebooked.
    pub channel: Channel,
    pub state: ItemState,
    /// Send attempts so far.
    pub attempts: u32,
    /// When a retry is due; `None` means now.
    pub next_attempt_ms: Option<i64>,
    /// The last attempt may have reached the provider (it timed out after the
    /// request was written). The next worker checks with the provider before
    /// sending again.
    pub maybe_sent: bool,
    /// The most recent claim, if any.
    pub last_claim: Option<Claim>,
    pub recipient: Recipient,
    pub appointment: AppointmentInfo,
}

/// What a provider said when it took a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// `smtp`, `notify` or `letter-directory`.
    pub provider: String,
    /// The provider's id: Notify's notification id, the SMTP Message-ID, or
    /// the letter's file name.
    pub id: Option<String>,
    /// Human-readable detail (the SMTP server's reply, Notify's status, ...).
    pub detail: String,
}

/// The result of one attempt, recorded on the item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub at_ms: i64,
    /// Send attempts so far, including this one.
    pub attempts: u32,
    /// The channel actually used (a letter that would now arrive too late
    /// falls back to SMS, email or a phone call).
    pub channel: Channel,
    pub status: OutcomeStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum OutcomeStatus {
    /// The provider took it.
    Sent { receipt: Receipt },
    /// Failed for now; try again at `next_attempt_ms`. `maybe_sent`: the
    /// attempt may have reached the provider, so check before resending.
    Retry {
        next_attempt_ms: i64,
        error: String,
        maybe_sent: bool,
    },
    /// Given up: rejected, or out of attempts.
    Failed { error: String },
    /// Not sent; staff must act.
    WaitingForStaff { reason: StaffReason, detail: String },
}

impl DeliveryOutcome {
    /// The FHIR `Communication.status` this outcome leaves the record in.
    pub fn fhir_status(&self) -> &'static str {
        match self.status {
            OutcomeStatus::Sent { .. } => "completed",
            OutcomeStatus::Retry { .. } => "preparation",
            OutcomeStatus::Failed { .. } => "not-done",
            OutcomeStatus::WaitingForStaff { .. } => "on-hold",
        }
    }

    /// The item as it is after this outcome is recorded (version unchanged:
    /// the store assigns a new one). For stores that keep [`OutboxItem`]s.
    pub fn apply_to(&self, item: &mut OutboxItem) {
        item.attempts = self.attempts;
        item.maybe_sent = false;
        item.next_attempt_ms = None;
        item.state = match &self.status {
            OutcomeStatus::Sent { .. } => ItemState::Completed,
            OutcomeStatus::Retry {
                next_attempt_ms,
                maybe_sent,
                ..
            } => {
                item.next_attempt_ms = Some(*next_attempt_ms);
                item.maybe_sent = *maybe_sent;
                ItemState::Ready
            }
            OutcomeStatus::Failed { error } => ItemState::Failed { error: error.clone() },
            OutcomeStatus::WaitingForStaff { reason, detail } => ItemState::WaitingForStaff {
                reason: *reason,
                detail: detail.clone(),
            },
        };
    }
}

impl Claim {
    /// The item as it is after this claim (version unchanged: the store
    /// assigns a new one). For stores that keep [`OutboxItem`]s.
    pub fn apply_to(&self, item: &mut OutboxItem) {
        item.state = ItemState::InProgress;
        item.last_claim = Some(self.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(lines: &[&str], city: Option<&str>, pc: Option<&str>, country: Option<&str>) -> PostalAddress {
        PostalAddress {
            line: lines.iter().map(|s| s.to_string()).collect(),
            city: city.map(str::to_string),
            district: None,
            postal_code: pc.map(str::to_string),
            country: country.map(str::to_string),
        }
    }

    #[test]
    fn envelope_lines_end_with_postcode_and_fit_notify() {
        let a = addr(
            &["1 High Street"],
            Some("Glasgow"),
            Some("G1 1AA"),
            Some("United Kingdom"),
        );
        assert_eq!(
            a.envelope_lines("Ada Okafor"),
            ["Ada Okafor", "1 High Street", "Glasgow", "G1 1AA"]
        );
        assert!(a.is_usable());
        let long = addr(
            &["Flat 2", "3 Long Road", "Hillhead", "West End", "Area"],
            Some("Glasgow"),
            Some("G12 8QQ"),
            None,
        );
        let lines = long.envelope_lines("Ada");
        assert_eq!(lines.len(), ENVELOPE_LINES_MAX);
        assert_eq!(lines[1], "Flat 2, 3 Long Road");
        assert_eq!(lines.last().unwrap(), "G12 8QQ");
        let abroad = addr(&["12 Rue X"], Some("Paris"), Some("75001"), Some("France"));
        assert_eq!(abroad.envelope_lines("A").last().unwrap(), "France");
        assert!(!addr(&["1 High Street"], Some("Glasgow"), None, None).is_usable());
        assert!(!addr(&[], None, Some("G1 1AA"), None).is_usable());
        assert_eq!(a.one_line(), "1 High Street, Glasgow, G1 1AA");
    }

    #[test]
    fn channel_codes_round_trip() {
        for c in [
            Channel::Letter {
                postage: Postage::First,
            },
            Channel::Sms,
            Channel::Email,
            Channel::PhoneCall,
            Channel::StaffList,
        ] {
            let postage = match c {
                Channel::Letter { postage } => Some(postage),
                _ => None,
            };
            assert_eq!(Channel::from_code(c.code(), postage), Some(c));
        }
        assert_eq!(Channel::from_code("fax", None), None);
    }
}
