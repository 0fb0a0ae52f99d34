//! NHS waiting-time rules that bound a rebooking.
//!
//! Hard deadlines (the earliest that applies wins):
//! - an operation (inpatient procedure or day case) cancelled by the provider on the
//!   day for a non-clinical reason must get a new date within 28 days of the cancelled date;
//! - RTT: the referral-to-treatment clock, referral date + 126 days (18 weeks);
//! - cancer: decision to treat + 31 days;
//! - chemotherapy: the regimen window `[earliest, latest]` (the earliest date is a hard lower bound too).
//!
//! Reasonable notice (21 days in England, 10 in Scotland) is soft: short notice
//! is penalised in the objective, never forbidden, and not penalised when waived.
//!
//! All day arithmetic is on UK local dates (Europe/London). A deadline date `d`
//! means "the new appointment starts on or before local date `d`".

use chrono::{Duration, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::model::{Params, Postponed};
use crate::uktime::{days_between, uk_date, uk_midnight};

/// The configurable numbers behind the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Operation cancelled on the day (non-clinical reason): new date within this many days. 28.
    pub cancelled_on_the_day_days: i64,
    /// RTT: referral + this many days. 126 (18 weeks).
    pub rtt_days: i64,
    /// Cancer: decision to treat + this many days. 31.
    pub cancer_days: i64,
    /// Reasonable notice in days (soft). 21 in England, 10 in Scotland.
    pub notice_days: i64,
    /// A deadline that has already passed before the earliest possible rebooking can no
    /// longer be met. If true (default), it is dropped and the appointment is booked as
    /// early as its other rules allow, flagged as breached; if false, the appointment is
    /// left unplaced (`Reason::WindowClosed`) for staff. A closed chemotherapy regimen
    /// window is always left for staff: the regimen has to be re-planned.
    pub book_breached: bool,
}

impl Rules {
    pub fn england() -> Rules {
        Rules {
            cancelled_on_the_day_days: 28,
            rtt_days: 126,
            cancer_days: 31,
            notice_days: 21,
            book_breached: true,
        }
    }
    pub fn scotland() -> Rules {
        Rules {
            notice_days: 10,
            ..Rules::england()
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::england()
    }
}

/// Which rule a deadline comes from. The order is the tie-break when two fall on one date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadlineKind {
    RegimenWindow,
    CancelledOnTheDay,
    Cancer,
    Rtt,
}

impl DeadlineKind {
    pub fn describe(self) -> &'static str {
        match self {
            DeadlineKind::RegimenWindow => "end of the chemotherapy regimen window",
            DeadlineKind::CancelledOnTheDay => "28 days after an operation cancelled on the day",
            DeadlineKind::Cancer => "31 days after the cancer decision to treat",
            DeadlineKind::Rtt => "18 weeks after referral (RTT)",
        }
    }
}

/// One hard deadline: the new appointment must start on or before `date` (UK local).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Deadline {
    pub date: NaiveDate,
    pub kind: DeadlineKind,
}

/// Every hard deadline that applies to `a`, earliest first.
pub fn deadlines(a: &Postponed, rules: &Rules) -> Vec<Deadline> {
    let mut out = Vec::new();
    if a.is_operation() && a.cancelled_on_the_day {
        let cancelled = uk_date(a.original_start_ms);
        out.push(Deadline {
            date: cancelled + Duration::days(rules.cancelled_on_the_day_days),
            kind: DeadlineKind::CancelledOnTheDay,
        });
    }
    if let Some(referral) = a.rtt_referral {
        out.push(Deadline {
            date: referral + Duration::days(rules.rtt_days),
            kind: DeadlineKind::Rtt,
        });
    }
    if let Some(dtt) = a.decision_to_treat {
        out.push(Deadline {
            date: dtt + Duration::days(rules.cancer_days),
            kind: DeadlineKind::Cancer,
        });
    }
    if let Some(w) = a.regimen_window {
        out.push(Deadline {
            date: w.latest,
            kind: DeadlineKind::RegimenWindow,
        });
    }
    out.sort();
    out
}

/// The hard deadline: the earliest that applies, if any.
pub fn hard_deadline(a: &Postponed, rules: &Rules) -> Option<Deadline> {
    deadlines(a, rules).into_iter().next()
}

/// The time window in which `a` may be rebooked, given the run's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// No start before this instant: `now + min lead`, and the regimen window's first day.
    pub from_ms: i64,
    /// Start strictly before this instant (midnight after the deadline date), if a deadline applies.
    pub until_ms: Option<i64>,
    /// The deadline in force.
    pub deadline: Option<Deadline>,
    /// Deadlines already passed at `from_ms` and dropped (`Rules::book_breached`).
    pub breached: Vec<Deadline>,
    /// The window is empty.
    pub closed: bool,
}

impl Allowed {
    /// Whether a start at `start_ms` is inside the window.
    pub fn contains(&self, start_ms: i64) -> bool {
        !self.closed && start_ms >= self.from_ms && self.until_ms.is_none_or(|u| start_ms < u)
    }
}

/// The window in which `a` may start, applying the hard rules and the breach policy.
pub fn allowed(a: &Postponed, params: &Params) -> Allowed {
    let rules = &params.rules;
    let mut from_ms = params.earliest_rebook_ms();
    if let Some(w) = a.regimen_window {
        from_ms = from_ms.max(uk_midnight(w.earliest));
    }
    let from_date = uk_date(from_ms);
    let mut kept = Vec::new();
    let mut breached = Vec::new();
    for d in deadlines(a, rules) {
        if rules.book_breached && d.kind != DeadlineKind::RegimenWindow && d.date < from_date {
            breached.push(d);
        } else {
            kept.push(d);
        }
    }
    let deadline = kept.first().copied();
    let until_ms = deadline.map(|d| uk_midnight(d.date + Duration::days(1)));
    let closed = until_ms.is_some_and(|u| u <= from_ms);
    Allowed {
        from_ms,
        until_ms,
        deadline,
        breached,
        closed,
    }
}

/// Whether a start at `start_ms` gives less than reasonable notice (counted in UK
/// calendar days from the run date) and the patient has not waived notice.
pub fn short_notice(params: &Params, start_ms: i64, waived: bool) -> bool {
    !waived && days_between(uk_date(params.now_ms), uk_date(start_ms)) < params.rules.notice_days
}

/// The first instant that gives reasonable notice (midnight starting the first such day).
pub fn notice_from_ms(params: &Params) -> i64 {
    uk_midnight(uk_date(params.now_ms) + Duration::days(params.rules.notice_days))
}

/// Lateness of a new start: days from the original appointment's date to the new
/// date (UK local dates), never negative.
pub fn lateness_days(a: &Postponed, start_ms: i64) -> i64 {
    days_between(uk_date(a.original_start_ms), uk_date(start_ms)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Category, DateWindow};
    use crate::uktime::uk_at;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    /// A compact description of the inputs that matter to the rules.
    #[derive(Clone, Copy)]
    struct In {
        cat: Category,
        original: &'static str,
        on_day: bool,
        rtt: Option<&'static str>,
        dtt: Option<&'static str>,
        regimen: Option<(&'static str, &'static str)>,
    }

    const OP: In = In {
        cat: Category::Outpatient,
        original: "2026-10-01",
        on_day: false,
        rtt: None,
        dtt: None,
        regimen: None,
    };

    fn appt(i: In) -> Postponed {
        Postponed {
            id: "a".into(),
            patient: "p".into(),
            category: i.cat,
            priority: 3,
            duration_minutes: 30,
            original_start_ms: uk_at(d(i.original), 10, 0),
            cancelled_on_the_day: i.on_day,
            rtt_referral: i.rtt.map(d),
            decision_to_treat: i.dtt.map(d),
            regimen_window: i.regimen.map(|(e, l)| DateWindow {
                earliest: d(e),
                latest: d(l),
            }),
            practitioners: vec![],
            locations: vec![],
            busy: vec![],
            notice_waived: false,
        }
    }

    /// Checks the hard deadline picked for `input`: `None` or `(date, kind)`.
    fn check(input: In, expected: Option<(&str, DeadlineKind)>) {
        let got = hard_deadline(&appt(input), &Rules::england());
        let want = expected.map(|(s, kind)| Deadline { date: d(s), kind });
        assert_eq!(
            got, want,
            "category {:?} original {} on_day {}",
            input.cat, input.original, input.on_day
        );
    }

    use DeadlineKind::*;

    #[test]
    fn no_rule_no_deadline() {
        check(OP, None);
        check(
            In {
                cat: Category::DayCase,
                ..OP
            },
            None,
        );
        check(
            In {
                cat: Category::Chemotherapy,
                ..OP
            },
            None,
        );
    }

    #[test]
    fn cancelled_on_the_day_applies_to_operations_only() {
        check(
            In {
                cat: Category::InpatientProcedure,
                on_day: true,
                ..OP
            },
            Some(("2026-10-29", CancelledOnTheDay)),
        );
        check(
            In {
                cat: Category::DayCase,
                on_day: true,
                ..OP
            },
            Some(("2026-10-29", CancelledOnTheDay)),
        );
        check(
            In {
                cat: Category::Outpatient,
                on_day: true,
                ..OP
            },
            None,
        );
        check(
            In {
                cat: Category::Chemotherapy,
                on_day: true,
                ..OP
            },
            None,
        );
        check(
            In {
                cat: Category::DayCase,
                on_day: false,
                ..OP
            },
            None,
        );
        // Across a month and year end.
        check(
            In {
                cat: Category::DayCase,
                on_day: true,
                original: "2026-12-20",
                ..OP
            },
            Some(("2027-01-17", CancelledOnTheDay)),
        );
        // Across February of a non-leap year.
        check(
            In {
                cat: Category::DayCase,
                on_day: true,
                original: "2027-02-10",
                ..OP
            },
            Some(("2027-03-10", CancelledOnTheDay)),
        );
    }

    #[test]
    fn cancelled_date_is_the_uk_local_date() {
        // 23:30 UTC on 30 June is 00:30 BST on 1 July: the cancelled date is 1 July.
        let mut a = appt(In {
            cat: Category::DayCase,
            on_day: true,
            ..OP
        });
        a.original_start_ms = chrono::NaiveDateTime::parse_from_str("2026-06-30 23:30", "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert_eq!(hard_deadline(&a, &Rules::england()).unwrap().date, d("2026-07-29"));
    }

    #[test]
    fn rtt_is_referral_plus_126_days() {
        check(
            In {
                rtt: Some("2026-06-01"),
                ..OP
            },
            Some(("2026-10-05", Rtt)),
        );
        check(
            In {
                rtt: Some("2026-01-01"),
                ..OP
            },
            Some(("2026-05-07", Rtt)),
        );
        check(
            In {
                rtt: Some("2027-12-01"),
                ..OP
            },
            Some(("2028-04-05", Rtt)),
        ); // leap year 2028
        check(
            In {
                cat: Category::DayCase,
                rtt: Some("2026-06-01"),
                ..OP
            },
            Some(("2026-10-05", Rtt)),
        );
    }

    #[test]
    fn cancer_is_decision_to_treat_plus_31_days() {
        check(
            In {
                dtt: Some("2026-09-20"),
                ..OP
            },
            Some(("2026-10-21", Cancer)),
        );
        check(
            In {
                cat: Category::Chemotherapy,
                dtt: Some("2026-02-01"),
                ..OP
            },
            Some(("2026-03-04", Cancer)),
        );
    }

    #[test]
    fn regimen_window_end_is_a_deadline() {
        check(
            In {
                cat: Category::Chemotherapy,
                regimen: Some(("2026-10-05", "2026-10-16")),
                ..OP
            },
            Some(("2026-10-16", RegimenWindow)),
        );
    }

    #[test]
    fn the_earliest_deadline_wins() {
        // 28-day (Oct 29) vs RTT (Oct 5): RTT.
        check(
            In {
                cat: Category::InpatientProcedure,
                on_day: true,
                rtt: Some("2026-06-01"),
                ..OP
            },
            Some(("2026-10-05", Rtt)),
        );
        // 28-day (Oct 29) vs RTT (Dec 1 2026 + ...): 28-day.
        check(
            In {
                cat: Category::InpatientProcedure,
                on_day: true,
                rtt: Some("2026-08-01"),
                ..OP
            },
            Some(("2026-10-29", CancelledOnTheDay)),
        );
        // Cancer (Oct 21) vs RTT (Nov 4) vs 28-day (Oct 29): cancer.
        check(
            In {
                cat: Category::DayCase,
                on_day: true,
                rtt: Some("2026-07-01"),
                dtt: Some("2026-09-20"),
                ..OP
            },
            Some(("2026-10-21", Cancer)),
        );
        // Regimen (Oct 12) vs cancer (Oct 21): regimen.
        check(
            In {
                cat: Category::Chemotherapy,
                dtt: Some("2026-09-20"),
                regimen: Some(("2026-10-02", "2026-10-12")),
                ..OP
            },
            Some(("2026-10-12", RegimenWindow)),
        );
        // Same date: the regimen window is reported (tie-break order).
        check(
            In {
                cat: Category::Chemotherapy,
                dtt: Some("2026-09-20"),
                regimen: Some(("2026-10-02", "2026-10-21")),
                ..OP
            },
            Some(("2026-10-21", RegimenWindow)),
        );
    }

    #[test]
    fn deadlines_lists_all_sorted() {
        let a = appt(In {
            cat: Category::DayCase,
            on_day: true,
            rtt: Some("2026-07-01"),
            dtt: Some("2026-09-20"),
            ..OP
        });
        let got: Vec<_> = deadlines(&a, &Rules::england())
            .into_iter()
            .map(|x| (x.date, x.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                (d("2026-10-21"), Cancer),
                (d("2026-10-29"), CancelledOnTheDay),
                (d("2026-11-04"), Rtt)
            ]
        );
    }

    #[test]
    fn configurable_numbers() {
        let rules = Rules {
            rtt_days: 7 * 52,
            cancer_days: 62,
            cancelled_on_the_day_days: 14,
            ..Rules::england()
        };
        let a = appt(In {
            cat: Category::DayCase,
            on_day: true,
            ..OP
        });
        assert_eq!(hard_deadline(&a, &rules).unwrap().date, d("2026-10-15"));
        let a = appt(In {
            dtt: Some("2026-09-01"),
            ..OP
        });
        assert_eq!(hard_deadline(&a, &rules).unwrap().date, d("2026-11-02"));
        assert_eq!(Rules::scotland().notice_days, 10);
        assert_eq!(Rules::england().notice_days, 21);
    }

    fn params(now: &str) -> Params {
        let mut p = Params::new(uk_at(d(now), 8, 0));
        p.min_lead_minutes = 24 * 60;
        p
    }

    /// Checks the allowed window: (from local date-time, until deadline date, breached kinds, closed).
    fn check_allowed(
        input: In,
        p: &Params,
        from: (&str, u32, u32),
        deadline: Option<&str>,
        breached: &[DeadlineKind],
        closed: bool,
    ) {
        let w = allowed(&appt(input), p);
        assert_eq!(w.from_ms, uk_at(d(from.0), from.1, from.2), "from");
        assert_eq!(w.deadline.map(|x| x.date), deadline.map(d), "deadline");
        assert_eq!(
            w.until_ms,
            deadline.map(|s| uk_midnight(d(s) + Duration::days(1))),
            "until"
        );
        assert_eq!(
            w.breached.iter().map(|b| b.kind).collect::<Vec<_>>(),
            breached,
            "breached"
        );
        assert_eq!(w.closed, closed, "closed");
    }

    #[test]
    fn allowed_windows() {
        let p = params("2026-10-05");
        // Plain: from now + 24h, no deadline.
        check_allowed(OP, &p, ("2026-10-06", 8, 0), None, &[], false);
        // Regimen earliest later than now + lead: from its midnight.
        check_allowed(
            In {
                cat: Category::Chemotherapy,
                regimen: Some(("2026-10-09", "2026-10-20")),
                ..OP
            },
            &p,
            ("2026-10-09", 0, 0),
            Some("2026-10-20"),
            &[],
            false,
        );
        // Regimen window already over: closed even when breaches are booked.
        check_allowed(
            In {
                cat: Category::Chemotherapy,
                regimen: Some(("2026-09-20", "2026-10-05")),
                ..OP
            },
            &p,
            ("2026-10-06", 8, 0),
            Some("2026-10-05"),
            &[],
            true,
        );
        // Deadline on the day of earliest rebooking: still open (08:00 to midnight).
        check_allowed(
            In {
                dtt: Some("2026-09-05"),
                ..OP
            },
            &p,
            ("2026-10-06", 8, 0),
            Some("2026-10-06"),
            &[],
            false,
        );
        // RTT already breached: dropped, booked as early as possible.
        check_allowed(
            In {
                rtt: Some("2026-05-01"),
                ..OP
            },
            &p,
            ("2026-10-06", 8, 0),
            None,
            &[Rtt],
            false,
        );
        // RTT breached but the 28-day rule still applies.
        check_allowed(
            In {
                cat: Category::DayCase,
                on_day: true,
                rtt: Some("2026-05-01"),
                ..OP
            },
            &p,
            ("2026-10-06", 8, 0),
            Some("2026-10-29"),
            &[Rtt],
            false,
        );
        // With book_breached = false the breached RTT closes the window.
        let mut strict = p.clone();
        strict.rules.book_breached = false;
        check_allowed(
            In {
                rtt: Some("2026-05-01"),
                ..OP
            },
            &strict,
            ("2026-10-06", 8, 0),
            Some("2026-09-04"),
            &[],
            true,
        );
        // Regimen earliest after latest: closed.
        check_allowed(
            In {
                cat: Category::Chemotherapy,
                regimen: Some(("2026-10-20", "2026-10-10")),
                ..OP
            },
            &p,
            ("2026-10-20", 0, 0),
            Some("2026-10-10"),
            &[],
            true,
        );
    }

    #[test]
    fn allowed_contains() {
        let p = params("2026-10-05");
        let w = allowed(
            &appt(In {
                dtt: Some("2026-09-10"),
                ..OP
            }),
            &p,
        ); // deadline 2026-10-11
        assert!(!w.contains(uk_at(d("2026-10-06"), 7, 59)));
        assert!(w.contains(uk_at(d("2026-10-06"), 8, 0)));
        assert!(w.contains(uk_at(d("2026-10-11"), 23, 59)));
        assert!(!w.contains(uk_at(d("2026-10-12"), 0, 0)));
    }

    #[test]
    fn notice_is_soft_and_waivable() {
        let p = params("2026-10-05"); // Monday; 21 days -> 2026-10-26
        for (date, waived, want) in [
            ("2026-10-06", false, true),
            ("2026-10-25", false, true),
            ("2026-10-26", false, false),
            ("2026-11-30", false, false),
            ("2026-10-06", true, false),
        ] {
            assert_eq!(
                short_notice(&p, uk_at(d(date), 9, 0), waived),
                want,
                "{date} waived {waived}"
            );
        }
        assert_eq!(notice_from_ms(&p), uk_midnight(d("2026-10-26")));
        let mut scot = p.clone();
        scot.rules = Rules::scotland();
        assert!(short_notice(&scot, uk_at(d("2026-10-14"), 9, 0), false));
        assert!(!short_notice(&scot, uk_at(d("2026-10-15"), 9, 0), false));
    }

    #[test]
    fn lateness() {
        let a = appt(OP); // original 2026-10-01 10:00
        assert_eq!(lateness_days(&a, uk_at(d("2026-10-01"), 16, 0)), 0);
        assert_eq!(lateness_days(&a, uk_at(d("2026-10-02"), 0, 30)), 1);
        assert_eq!(lateness_days(&a, uk_at(d("2026-10-29"), 9, 0)), 28);
        assert_eq!(lateness_days(&a, uk_at(d("2026-09-20"), 9, 0)), 0);
    }
}
