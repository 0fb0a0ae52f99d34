//! Lists for staff: whom to phone, whom nobody can reach, and which sends to
//! check by hand. Pure: built from outbox items the server reads.

use serde::Serialize;

use crate::message::uk_datetime;
use crate::model::{Channel, ItemState, OutboxItem, StaffReason};

/// One patient on a staff list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaffEntry {
    /// `Communication.id`.
    pub communication_id: String,
    pub patient_id: String,
    pub name: String,
    pub nhs_number: Option<String>,
    /// Mobile first.
    pub phones: Vec<String>,
    pub email: Option<String>,
    pub address: Option<String>,
    pub appointment_id: String,
    pub appointment_start_ms: i64,
    /// UK local, e.g. "Tuesday 13 October 2026 at 9:30am".
    pub appointment: String,
    pub clinic: String,
    pub location: String,
    pub previous_appointment: Option<String>,
    /// Why this patient is on the list.
    pub reason: String,
}

/// The staff lists, each sorted by appointment time (soonest first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StaffLists {
    /// Patients to phone: no letter in time and no mobile or email, or a
    /// send failed and they have a phone number.
    pub phone_calls: Vec<StaffEntry>,
    /// Patients with no usable phone, email or address (or a failed send
    /// and no phone number): find another way.
    pub no_contact_details: Vec<StaffEntry>,
    /// Sends interrupted where the provider cannot say whether they arrived:
    /// check (e.g. the mail relay's log for the Message-ID) before contacting again.
    pub check_delivery: Vec<StaffEntry>,
}

impl StaffLists {
    pub fn len(&self) -> usize {
        self.phone_calls.len() + self.no_contact_details.len() + self.check_delivery.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entry(item: &OutboxItem, reason: String) -> StaffEntry {
    let r = &item.recipient;
    let a = &item.appointment;
    let text = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    StaffEntry {
        communication_id: item.id.clone(),
        patient_id: r.patient_id.clone(),
        name: r.name.clone(),
        nhs_number: text(&r.nhs_number),
        phones: r.phones(),
        email: text(&r.email),
        address: r.address.as_ref().filter(|ad| ad.is_usable()).map(|ad| ad.one_line()),
        appointment_id: a.id.clone(),
        appointment_start_ms: a.start_ms,
        appointment: uk_datetime(a.start_ms),
        clinic: a.service.clone(),
        location: a.location.clone(),
        previous_appointment: a.previous_start_ms.map(uk_datetime),
        reason,
    }
}

/// Sorts `items` onto the staff lists. Items already delivered, and items
/// still to be sent by an adapter, are on no list.
///
/// - waiting for staff: by reason (phone call, no contact details, delivery
///   unknown; "channel unavailable" goes to phone calls if there is a phone);
/// - failed: phone calls if there is a phone, otherwise no contact details;
/// - not yet processed but with a phone-call or staff-list channel: as if processed.
pub fn staff_lists(items: &[OutboxItem]) -> StaffLists {
    let mut lists = StaffLists::default();
    for item in items {
        let has_phone = !item.recipient.phones().is_empty();
        let call_or_none = |lists: &mut StaffLists, reason: String| {
            if has_phone {
                lists.phone_calls.push(entry(item, reason));
            } else {
                lists.no_contact_details.push(entry(item, reason));
            }
        };
        match &item.state {
            ItemState::Completed => {}
            ItemState::WaitingForStaff { reason, detail } => match reason {
                StaffReason::PhoneCall => lists.phone_calls.push(entry(item, detail.clone())),
                StaffReason::NoContactDetails => lists.no_contact_details.push(entry(item, detail.clone())),
                StaffReason::DeliveryUnknown => lists.check_delivery.push(entry(item, detail.clone())),
                StaffReason::ChannelUnavailable => call_or_none(&mut lists, detail.clone()),
            },
            ItemState::Failed { error } => call_or_none(&mut lists, format!("could not be notified: {error}")),
            ItemState::Ready | ItemState::InProgress => match item.channel {
                Channel::PhoneCall => lists
                    .phone_calls
                    .push(entry(item, "no letter arrives in time and no mobile or email".into())),
                Channel::StaffList => lists
                    .no_contact_details
                    .push(entry(item, "no usable phone number, email or postal address".into())),
                _ => {}
            },
        }
    }
    for list in [
        &mut lists.phone_calls,
        &mut lists.no_contact_details,
        &mut lists.check_delivery,
    ] {
        list.sort_by(|a, b| {
            a.appointment_start_ms
                .cmp(&b.appointment_start_ms)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.communication_id.cmp(&b.communication_id))
        });
    }
    lists
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One list as CSV (header row first), for printing or a spreadsheet.
pub fn to_csv(entries: &[StaffEntry]) -> String {
    let mut out = String::from(
        "appointment,name,nhs_number,phones,email,address,clinic,location,previous_appointment,reason,communication_id,patient_id,appointment_id\n",
    );
    for e in entries {
        let row = [
            e.appointment.as_str(),
            &e.name,
            e.nhs_number.as_deref().unwrap_or(""),
            &e.phones.join(" / "),
            e.email.as_deref().unwrap_or(""),
            e.address.as_deref().unwrap_or(""),
            &e.clinic,
            &e.location,
            e.previous_appointment.as_deref().unwrap_or(""),
            &e.reason,
            &e.communication_id,
            &e.patient_id,
            &e.appointment_id,
        ];
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
