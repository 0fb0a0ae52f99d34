//! What the patient is told: times in UK local time, the email text, and the
//! personalisation values for Notify templates. Pure: no IO, no clock.

use hale_sched::uktime::to_uk_local;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::OutboxItem;

/// Who the notification is from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// E.g. "Hale General Hospital".
    pub organisation: String,
    /// The number patients call to change an appointment.
    pub phone: String,
    /// The organisation's postal address (letters; no name line).
    pub return_address: Vec<String>,
}

/// `Tuesday 13 October 2026 at 9:30am`, UK local time.
pub fn uk_datetime(ms: i64) -> String {
    format!("{} at {}", uk_day(ms), uk_clock(ms))
}

/// `Tuesday 13 October 2026`, UK local time.
pub fn uk_day(ms: i64) -> String {
    to_uk_local(ms).format("%A %-d %B %Y").to_string()
}

/// `9:30am`, UK local time.
pub fn uk_clock(ms: i64) -> String {
    to_uk_local(ms).format("%-I:%M%P").to_string()
}

/// `13 October 2026`, UK local time (a letter's date).
pub fn uk_date(ms: i64) -> String {
    to_uk_local(ms).format("%-d %B %Y").to_string()
}

/// An email's subject and plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailText {
    pub subject: String,
    pub body: String,
}

/// The sentence explaining what happened, e.g. "We had to cancel your
/// appointment on Monday 5 October 2026 at 10:00am because of an IT failure."
pub fn what_happened(item: &OutboxItem) -> String {
    let a = &item.appointment;
    let when = a
        .previous_start_ms
        .map(|t| format!(" on {}", uk_datetime(t)))
        .unwrap_or_default();
    let why = a
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| format!(" because of {r}"))
        .unwrap_or_default();
    format!("We are sorry: we had to cancel your appointment{when}{why}. We have rearranged it.")
}

/// The email for `item`.
pub fn email_text(item: &OutboxItem, sender: &Sender) -> EmailText {
    let a = &item.appointment;
    let mut body = String::new();
    body.push_str(&format!("Dear {},\n\n", item.recipient.name.trim()));
    body.push_str("Your appointment has been rearranged.\n\n");
    body.push_str(&what_happened(item));
    body.push_str("\n\nYour new appointment:\n\n");
    body.push_str(&format!("  When:   {}\n", uk_datetime(a.start_ms)));
    body.push_str(&format!("  Clinic: {}\n", a.service));
    body.push_str(&format!("  Where:  {}\n", a.location));
    if let Some(p) = a.practitioner.as_deref().filter(|p| !p.trim().is_empty()) {
        body.push_str(&format!("  With:   {p}\n"));
    }
    if let Some(t) = a.previous_start_ms {
        body.push_str(&format!("\nThis replaces your appointment on {}.\n", uk_datetime(t)));
    }
    body.push_str(&format!(
        "\nIf you cannot attend, please call us on {} as soon as you can so that we can give the \
         appointment to someone else and arrange another time for you.\n",
        sender.phone
    ));
    body.push_str(&format!("\n{}\n", sender.organisation));
    body.push_str(&format!(
        "\nReference: {}. This is an automated message; replies are not read.\n",
        item.id
    ));
    EmailText {
        subject: format!(
            "{}: your appointment has been rearranged to {}",
            sender.organisation,
            uk_datetime(a.start_ms)
        ),
        body,
    }
}

/// Personalisation for Notify templates. Every key is always present (empty
/// when unknown), because Notify rejects a request that lacks any placeholder
/// its template uses and ignores keys it does not use:
///
/// | key | example |
/// |---|---|
/// | `name` | Ada Okafor |
/// | `new_time` | Tuesday 13 October 2026 at 9:30am |
/// | `new_date` | Tuesday 13 October 2026 |
/// | `new_clock` | 9:30am |
/// | `old_time` | Monday 5 October 2026 at 10:00am |
/// | `clinic` | Cardiology outpatient clinic |
/// | `location` | Outpatients B, Royal Infirmary |
/// | `practitioner` | Dr Rao |
/// | `reason` | an IT failure at the hospital |
/// | `what_happened` | We are sorry: we had to cancel ... |
/// | `phone` | 0141 496 0000 |
/// | `organisation` | Hale General Hospital |
/// | `nhs_number` | 999 123 4567 |
///
/// Letters add `address_line_1` ... `address_line_7` (see
/// [`crate::model::PostalAddress::envelope_lines`]).
pub fn personalisation(item: &OutboxItem, sender: &Sender) -> Map<String, Value> {
    let a = &item.appointment;
    let s = |v: &str| Value::String(v.trim().to_string());
    let opt = |v: &Option<String>| Value::String(v.as_deref().unwrap_or("").trim().to_string());
    let mut m = Map::new();
    m.insert("name".into(), s(&item.recipient.name));
    m.insert("new_time".into(), s(&uk_datetime(a.start_ms)));
    m.insert("new_date".into(), s(&uk_day(a.start_ms)));
    m.insert("new_clock".into(), s(&uk_clock(a.start_ms)));
    m.insert(
        "old_time".into(),
        s(&a.previous_start_ms.map(uk_datetime).unwrap_or_default()),
    );
    m.insert("clinic".into(), s(&a.service));
    m.insert("location".into(), s(&a.location));
    m.insert("practitioner".into(), opt(&a.practitioner));
    m.insert("reason".into(), opt(&a.reason));
    m.insert("what_happened".into(), s(&what_happened(item)));
    m.insert("phone".into(), s(&sender.phone));
    m.insert("organisation".into(), s(&sender.organisation));
    m.insert("nhs_number".into(), opt(&item.recipient.nhs_number));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use hale_sched::uktime::uk_at;

    #[test]
    fn times_are_uk_local() {
        // 08:30 UTC on 13 October 2026 is 09:30 BST.
        let t = NaiveDate::from_ymd_opt(2026, 10, 13)
            .unwrap()
            .and_hms_opt(8, 30, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert_eq!(uk_datetime(t), "Tuesday 13 October 2026 at 9:30am");
        // 14:05 in December is GMT.
        let t = uk_at(NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(), 14, 5);
        assert_eq!(uk_datetime(t), "Tuesday 1 December 2026 at 2:05pm");
        assert_eq!(uk_date(t), "1 December 2026");
    }
}
