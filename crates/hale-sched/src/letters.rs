//! When a letter sent through GOV.UK Notify arrives, and which channel reaches a
//! patient before their appointment.
//!
//! Notify's published rules, as modelled here (all in UK local time):
//! - a letter is printed at 17:30 on the day it is sent if that is a working day
//!   and it was sent at or before 17:30; otherwise on the next working day;
//! - it is dispatched on the next working day after printing;
//! - first class arrives 1 delivery day after dispatch, second class 2;
//! - working days are Monday to Friday except bank holidays; delivery days are
//!   Monday to Saturday except bank holidays.

use std::collections::BTreeSet;

use chrono::{Datelike, Duration, NaiveDate, NaiveTime, Weekday};
use serde::{Deserialize, Serialize};

use crate::uktime::{days_between, is_weekend, to_uk_local, uk_date};

/// Bank holidays in England and Wales, 2025 to 2027 (gov.uk/bank-holidays), including
/// substitute days.
pub const ENGLAND_AND_WALES_BANK_HOLIDAYS: &[&str] = &[
    // 2025
    "2025-01-01", // New Year's Day
    "2025-04-18", // Good Friday
    "2025-04-21", // Easter Monday
    "2025-05-05", // Early May bank holiday
    "2025-05-26", // Spring bank holiday
    "2025-08-25", // Summer bank holiday
    "2025-12-25", // Christmas Day
    "2025-12-26", // Boxing Day
    // 2026
    "2026-01-01",
    "2026-04-03", // Good Friday
    "2026-04-06", // Easter Monday
    "2026-05-04",
    "2026-05-25",
    "2026-08-31",
    "2026-12-25",
    "2026-12-28", // Boxing Day (substitute day)
    // 2027
    "2027-01-01",
    "2027-03-26", // Good Friday
    "2027-03-29", // Easter Monday
    "2027-05-03",
    "2027-05-31",
    "2027-08-30",
    "2027-12-27", // Christmas Day (substitute day)
    "2027-12-28", // Boxing Day (substitute day)
];

/// Working days and delivery days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calendar {
    pub bank_holidays: BTreeSet<NaiveDate>,
}

impl Calendar {
    pub fn new(bank_holidays: impl IntoIterator<Item = NaiveDate>) -> Calendar {
        Calendar {
            bank_holidays: bank_holidays.into_iter().collect(),
        }
    }

    /// England and Wales, 2025-2027.
    pub fn england_and_wales() -> Calendar {
        Calendar::new(
            ENGLAND_AND_WALES_BANK_HOLIDAYS
                .iter()
                .map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("valid built-in date")),
        )
    }

    pub fn is_bank_holiday(&self, date: NaiveDate) -> bool {
        self.bank_holidays.contains(&date)
    }

    /// Monday to Friday, not a bank holiday.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        !is_weekend(date) && !self.is_bank_holiday(date)
    }

    /// Monday to Saturday, not a bank holiday (Royal Mail delivers on Saturdays).
    pub fn is_delivery_day(&self, date: NaiveDate) -> bool {
        date.weekday() != Weekday::Sun && !self.is_bank_holiday(date)
    }

    /// The first working day strictly after `date`.
    pub fn next_working_day(&self, date: NaiveDate) -> NaiveDate {
        let mut d = date + Duration::days(1);
        while !self.is_working_day(d) {
            d += Duration::days(1);
        }
        d
    }

    /// The `n`th delivery day strictly after `date`.
    pub fn add_delivery_days(&self, date: NaiveDate, n: u32) -> NaiveDate {
        let mut d = date;
        for _ in 0..n {
            d += Duration::days(1);
            while !self.is_delivery_day(d) {
                d += Duration::days(1);
            }
        }
        d
    }
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar::england_and_wales()
    }
}

/// Royal Mail postage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Postage {
    First,
    Second,
}

impl Postage {
    /// Delivery days after dispatch.
    pub fn transit_days(self) -> u32 {
        match self {
            Postage::First => 1,
            Postage::Second => 2,
        }
    }
}

/// Notify's print deadline, UK local time.
pub fn print_deadline() -> NaiveTime {
    NaiveTime::from_hms_opt(17, 30, 0).expect("valid time")
}

/// The dates a letter goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetterTimeline {
    pub printed: NaiveDate,
    pub dispatched: NaiveDate,
    pub delivered: NaiveDate,
}

/// The expected timeline of a letter sent to Notify at `sent_ms`.
pub fn letter_timeline(sent_ms: i64, postage: Postage, calendar: &Calendar) -> LetterTimeline {
    let local = to_uk_local(sent_ms);
    let day = local.date();
    let printed = if calendar.is_working_day(day) && local.time() <= print_deadline() {
        day
    } else {
        calendar.next_working_day(day)
    };
    let dispatched = calendar.next_working_day(printed);
    let delivered = calendar.add_delivery_days(dispatched, postage.transit_days());
    LetterTimeline {
        printed,
        dispatched,
        delivered,
    }
}

/// How a patient can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Contact {
    /// A mobile number (SMS).
    pub mobile: bool,
    pub email: bool,
    /// Any phone number (landline or mobile) staff can call.
    pub phone: bool,
    /// A postal address.
    pub address: bool,
}

/// How to choose a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactPolicy {
    /// A letter must arrive at least this many days before the appointment date.
    pub margin_days: i64,
    /// Postage classes to try, in order (cheapest first).
    pub postage: Vec<Postage>,
    pub calendar: Calendar,
}

impl Default for ContactPolicy {
    fn default() -> Self {
        ContactPolicy {
            margin_days: 2,
            postage: vec![Postage::Second, Postage::First],
            calendar: Calendar::default(),
        }
    }
}

/// The channel for one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "kebab-case")]
pub enum Channel {
    /// A letter that arrives in time.
    Letter {
        postage: Postage,
        delivered: NaiveDate,
    },
    Sms,
    Email,
    /// Staff phone the patient (no letter in time, no mobile or email).
    PhoneCall,
    /// Staff must find another way (no usable phone, email, or address in time).
    StaffList,
}

/// Chooses how to tell a patient about an appointment at `appointment_ms`, for a
/// message sent at `send_ms`: a letter if one arrives `margin_days` before the
/// appointment date; otherwise SMS, then email; otherwise a phone call by staff;
/// otherwise the staff list.
pub fn choose_channel(send_ms: i64, appointment_ms: i64, contact: &Contact, policy: &ContactPolicy) -> Channel {
    let appointment_day = uk_date(appointment_ms);
    if contact.address && appointment_ms > send_ms {
        for &postage in &policy.postage {
            let t = letter_timeline(send_ms, postage, &policy.calendar);
            if days_between(t.delivered, appointment_day) >= policy.margin_days {
                return Channel::Letter {
                    postage,
                    delivered: t.delivered,
                };
            }
        }
    }
    if contact.mobile {
        Channel::Sms
    } else if contact.email {
        Channel::Email
    } else if contact.phone {
        Channel::PhoneCall
    } else {
        Channel::StaffList
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uktime::uk_at;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn sent(date: &str, hh: u32, mm: u32) -> i64 {
        uk_at(d(date), hh, mm)
    }

    #[test]
    fn built_in_bank_holidays_are_weekdays_and_sorted() {
        let mut prev = None;
        for s in ENGLAND_AND_WALES_BANK_HOLIDAYS {
            let date = d(s);
            assert!(!is_weekend(date), "{s} falls on a weekend");
            assert!(prev < Some(date), "{s} out of order");
            prev = Some(date);
        }
        assert_eq!(ENGLAND_AND_WALES_BANK_HOLIDAYS.len(), 24);
        // Easter: Good Friday is 2 days before Easter Sunday, Easter Monday the day after.
        for (gf, em) in [
            ("2025-04-18", "2025-04-21"),
            ("2026-04-03", "2026-04-06"),
            ("2027-03-26", "2027-03-29"),
        ] {
            assert_eq!(d(gf).weekday(), Weekday::Fri);
            assert_eq!(d(em) - d(gf), Duration::days(3));
        }
    }

    /// `check((sent date, hh, mm), postage, (printed, dispatched, delivered))`.
    fn check(at: (&str, u32, u32), postage: Postage, want: (&str, &str, &str)) {
        let got = letter_timeline(sent(at.0, at.1, at.2), postage, &Calendar::england_and_wales());
        let want = LetterTimeline {
            printed: d(want.0),
            dispatched: d(want.1),
            delivered: d(want.2),
        };
        assert_eq!(got, want, "sent {} {:02}:{:02} {:?}", at.0, at.1, at.2, postage);
    }

    use Postage::{First, Second};

    #[test]
    fn ordinary_weekdays() {
        // Monday 2026-10-05, before 17:30.
        check(("2026-10-05", 9, 0), First, ("2026-10-05", "2026-10-06", "2026-10-07"));
        check(("2026-10-05", 9, 0), Second, ("2026-10-05", "2026-10-06", "2026-10-08"));
        // Exactly 17:30 still makes the print run.
        check(
            ("2026-10-05", 17, 30),
            First,
            ("2026-10-05", "2026-10-06", "2026-10-07"),
        );
        // After 17:30: printed the next working day.
        check(
            ("2026-10-05", 17, 31),
            First,
            ("2026-10-06", "2026-10-07", "2026-10-08"),
        );
        check(
            ("2026-10-05", 23, 59),
            Second,
            ("2026-10-06", "2026-10-07", "2026-10-09"),
        );
        // Wednesday, second class: dispatched Thursday, delivered Saturday.
        check(
            ("2026-10-07", 10, 0),
            Second,
            ("2026-10-07", "2026-10-08", "2026-10-10"),
        );
    }

    #[test]
    fn fridays_and_weekends() {
        // Thursday before 17:30: dispatched Friday; first class arrives Saturday.
        check(("2026-10-08", 12, 0), First, ("2026-10-08", "2026-10-09", "2026-10-10"));
        // Thursday, second class: Saturday, then Monday (no Sunday delivery).
        check(
            ("2026-10-08", 12, 0),
            Second,
            ("2026-10-08", "2026-10-09", "2026-10-12"),
        );
        // Friday before 17:30: printed Friday, dispatched Monday.
        check(("2026-10-09", 16, 0), First, ("2026-10-09", "2026-10-12", "2026-10-13"));
        check(
            ("2026-10-09", 16, 0),
            Second,
            ("2026-10-09", "2026-10-12", "2026-10-14"),
        );
        // Friday after 17:30: printed Monday, dispatched Tuesday.
        check(("2026-10-09", 18, 0), First, ("2026-10-12", "2026-10-13", "2026-10-14"));
        // Saturday and Sunday: printed Monday.
        check(("2026-10-10", 9, 0), First, ("2026-10-12", "2026-10-13", "2026-10-14"));
        check(
            ("2026-10-11", 23, 0),
            Second,
            ("2026-10-12", "2026-10-13", "2026-10-15"),
        );
    }

    #[test]
    fn bank_holidays() {
        // Christmas 2026: Fri 25 and Mon 28 (Boxing Day substitute) are holidays.
        // Wed 23 Dec: printed 23, dispatched Thu 24, first class Sat 26 (25 is a holiday).
        check(("2026-12-23", 10, 0), First, ("2026-12-23", "2026-12-24", "2026-12-26"));
        // Second class from Thu 24: Sat 26, then Tue 29 (Sun 27, Mon 28 holiday).
        check(
            ("2026-12-23", 10, 0),
            Second,
            ("2026-12-23", "2026-12-24", "2026-12-29"),
        );
        // Thu 24 before 17:30: printed 24, dispatched Tue 29 (25, 26, 27, 28 not working days).
        check(("2026-12-24", 10, 0), First, ("2026-12-24", "2026-12-29", "2026-12-30"));
        // Thu 24 after 17:30: printed Tue 29, dispatched Wed 30, first class Thu 31.
        check(("2026-12-24", 18, 0), First, ("2026-12-29", "2026-12-30", "2026-12-31"));
        // Second class from Wed 30 Dec: Thu 31, then Sat 2 Jan (1 Jan holiday).
        check(("2026-12-29", 9, 0), Second, ("2026-12-29", "2026-12-30", "2027-01-02"));
        // 2025: Christmas Thu 25, Boxing Day Fri 26. Sent Wed 24: dispatched Mon 29.
        check(("2025-12-24", 9, 0), First, ("2025-12-24", "2025-12-29", "2025-12-30"));
        // Easter 2026: Good Friday 3 April, Easter Monday 6 April.
        // Thu 2 April: dispatched Tue 7 April.
        check(("2026-04-02", 11, 0), First, ("2026-04-02", "2026-04-07", "2026-04-08"));
        // Wed 1 April second class: dispatched Thu 2, Sat 4 (Fri 3 no delivery), Tue 7 (Mon 6 no delivery).
        check(
            ("2026-04-01", 11, 0),
            Second,
            ("2026-04-01", "2026-04-02", "2026-04-07"),
        );
        // Sent on Good Friday: printed Tue 7, dispatched Wed 8.
        check(("2026-04-03", 10, 0), First, ("2026-04-07", "2026-04-08", "2026-04-09"));
        // Easter 2027 (26 and 29 March) with the clocks going forward on Sun 28 March.
        check(
            ("2027-03-25", 17, 0),
            Second,
            ("2027-03-25", "2027-03-30", "2027-04-01"),
        );
        // Late May bank holiday 2026 (Mon 25 May): sent Fri 22 after 17:30 -> printed Tue 26.
        check(("2026-05-22", 19, 0), First, ("2026-05-26", "2026-05-27", "2026-05-28"));
    }

    #[test]
    fn print_cut_off_is_uk_local_time() {
        // 16:45 UTC in July is 17:45 BST: after the cut-off.
        let t = chrono::NaiveDateTime::parse_from_str("2026-07-15 16:45", "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let tl = letter_timeline(t, First, &Calendar::england_and_wales());
        assert_eq!(tl.printed, d("2026-07-16"));
        // 17:15 UTC in December is 17:15 GMT: before the cut-off.
        let t = chrono::NaiveDateTime::parse_from_str("2026-12-01 17:15", "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert_eq!(
            letter_timeline(t, First, &Calendar::england_and_wales()).printed,
            d("2026-12-01")
        );
    }

    #[test]
    fn custom_calendar() {
        // Scotland's 2 January holiday, say.
        let mut cal = Calendar::england_and_wales();
        cal.bank_holidays.insert(d("2026-01-02"));
        let tl = letter_timeline(sent("2025-12-31", 10, 0), First, &cal);
        assert_eq!(
            (tl.printed, tl.dispatched, tl.delivered),
            (d("2025-12-31"), d("2026-01-05"), d("2026-01-06"))
        );
        let none = Calendar::new([]);
        let tl = letter_timeline(sent("2025-12-24", 10, 0), First, &none);
        assert_eq!(tl.delivered, d("2025-12-26"));
    }

    const ALL: Contact = Contact {
        mobile: true,
        email: true,
        phone: true,
        address: true,
    };

    /// `check_channel(send, appointment date, contact, margin, expected)`.
    fn check_channel(send: (&str, u32, u32), appt: &str, contact: Contact, margin: i64, want: Channel) {
        let policy = ContactPolicy {
            margin_days: margin,
            ..ContactPolicy::default()
        };
        let got = choose_channel(sent(send.0, send.1, send.2), uk_at(d(appt), 10, 0), &contact, &policy);
        assert_eq!(
            got, want,
            "send {send:?} appointment {appt} contact {contact:?} margin {margin}"
        );
    }

    #[test]
    fn channel_choice() {
        let letter2 = |s: &str| Channel::Letter {
            postage: Second,
            delivered: d(s),
        };
        let letter1 = |s: &str| Channel::Letter {
            postage: First,
            delivered: d(s),
        };
        // Mon 5 Oct 09:00: second class arrives Thu 8, first class Wed 7.
        check_channel(("2026-10-05", 9, 0), "2026-10-26", ALL, 2, letter2("2026-10-08"));
        check_channel(("2026-10-05", 9, 0), "2026-10-10", ALL, 2, letter2("2026-10-08"));
        // Second class too late with margin 2, first class in time.
        check_channel(("2026-10-05", 9, 0), "2026-10-09", ALL, 2, letter1("2026-10-07"));
        // Neither letter in time: SMS.
        check_channel(("2026-10-05", 9, 0), "2026-10-08", ALL, 2, Channel::Sms);
        // Margin 0: a letter arriving on the appointment day counts.
        check_channel(("2026-10-05", 9, 0), "2026-10-07", ALL, 0, letter1("2026-10-07"));
        // No mobile: email; no email: phone call; nothing: staff.
        let no_mobile = Contact { mobile: false, ..ALL };
        check_channel(("2026-10-05", 9, 0), "2026-10-08", no_mobile, 2, Channel::Email);
        let phone_only = Contact {
            phone: true,
            address: true,
            ..Contact::default()
        };
        check_channel(("2026-10-05", 9, 0), "2026-10-08", phone_only, 2, Channel::PhoneCall);
        let address_only = Contact {
            address: true,
            ..Contact::default()
        };
        check_channel(("2026-10-05", 9, 0), "2026-10-08", address_only, 2, Channel::StaffList);
        check_channel(
            ("2026-10-05", 9, 0),
            "2026-10-30",
            address_only,
            2,
            letter2("2026-10-08"),
        );
        check_channel(
            ("2026-10-05", 9, 0),
            "2026-10-30",
            Contact::default(),
            2,
            Channel::StaffList,
        );
        // No address: never a letter, even with time.
        let mobile_only = Contact {
            mobile: true,
            ..Contact::default()
        };
        check_channel(("2026-10-05", 9, 0), "2026-10-30", mobile_only, 2, Channel::Sms);
        // Friday after 17:30 before a Tuesday appointment: no letter in time.
        check_channel(("2026-10-09", 18, 0), "2026-10-13", ALL, 1, Channel::Sms);
        // Christmas week: sent Wed 23 Dec for Wed 30 Dec with margin 2: first class Sat 26 is fine.
        check_channel(("2026-12-23", 10, 0), "2026-12-30", ALL, 2, letter1("2026-12-26"));
        // ...but sent Thu 24 it arrives Wed 30: SMS.
        check_channel(("2026-12-24", 10, 0), "2026-12-30", ALL, 2, Channel::Sms);
    }
}
