//! Domain types: what is rebooked, into what, under which parameters, and the result.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::rules::Rules;

/// Appointment category, as carried in `Appointment.serviceCategory` with Hale's
/// code system (mirrors `hale_fhir::codes::APPOINTMENT_CATEGORIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Outpatient,
    InpatientProcedure,
    DayCase,
    Chemotherapy,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Outpatient,
        Category::InpatientProcedure,
        Category::DayCase,
        Category::Chemotherapy,
    ];

    /// The code in `https://hale.health/fhir/CodeSystem/appointment-category`.
    pub fn code(self) -> &'static str {
        match self {
            Category::Outpatient => "outpatient",
            Category::InpatientProcedure => "inpatient-procedure",
            Category::DayCase => "day-case",
            Category::Chemotherapy => "chemotherapy",
        }
    }

    pub fn from_code(code: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Inpatient procedures and day cases are operations (the 28-day rule applies).
    pub fn is_operation(self) -> bool {
        matches!(self, Category::InpatientProcedure | Category::DayCase)
    }

    /// Human label used in reports ("day case").
    pub fn label(self) -> &'static str {
        match self {
            Category::Outpatient => "outpatient",
            Category::InpatientProcedure => "inpatient procedure",
            Category::DayCase => "day case",
            Category::Chemotherapy => "chemotherapy",
        }
    }

    /// What an hour of this service's capacity is called in shortfall reports.
    pub fn capacity_unit(self) -> &'static str {
        match self {
            Category::Outpatient => "clinic-hours",
            Category::InpatientProcedure | Category::DayCase => "theatre-hours",
            Category::Chemotherapy => "chair-hours",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Appointment priority (`Appointment.priority`): 1 emergency / cancer two-week wait,
/// 2 urgent, 3 soon, 4 routine. Valid values are `PRIORITY_MIN..=PRIORITY_MAX`.
pub type Priority = u8;
pub const PRIORITY_MIN: Priority = 1;
pub const PRIORITY_MAX: Priority = 4;

/// A half-open interval of instants `[start_ms, end_ms)`, ms since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Interval {
    pub fn new(start_ms: i64, end_ms: i64) -> Interval {
        Interval { start_ms, end_ms }
    }
    /// Whether the two half-open intervals share an instant.
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.start_ms < other.end_ms && other.start_ms < self.end_ms
    }
}

/// An inclusive range of UK local dates (a chemotherapy regimen window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DateWindow {
    pub earliest: NaiveDate,
    pub latest: NaiveDate,
}

/// A postponed appointment to rebook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Postponed {
    /// Id of the cancelled Appointment (the new one will link to it).
    pub id: String,
    /// Id of the Patient.
    pub patient: String,
    pub category: Category,
    /// 1 (most urgent) ..= 4 (routine).
    pub priority: Priority,
    pub duration_minutes: i64,
    /// Start of the cancelled appointment.
    pub original_start_ms: i64,
    /// Cancelled by the provider, for a non-clinical reason, on the day of the
    /// appointment. For operations this triggers the 28-day rule.
    pub cancelled_on_the_day: bool,
    /// RTT (referral to treatment) clock start.
    pub rtt_referral: Option<NaiveDate>,
    /// Cancer decision-to-treat date.
    pub decision_to_treat: Option<NaiveDate>,
    /// Chemotherapy regimen window (both ends are hard).
    pub regimen_window: Option<DateWindow>,
    /// Suitable practitioners (ids); empty means any.
    pub practitioners: Vec<String>,
    /// Suitable locations (ids); empty means any.
    pub locations: Vec<String>,
    /// The patient's other appointments (busy intervals) that the rebooking must not overlap.
    pub busy: Vec<Interval>,
    /// The patient agreed to be seen at short notice.
    pub notice_waived: bool,
}

impl Postponed {
    pub fn is_operation(&self) -> bool {
        self.category.is_operation()
    }
}

/// A free slot that can take a rebooked appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeSlot {
    pub id: String,
    pub schedule: String,
    /// The service of the slot's schedule.
    pub category: Category,
    pub start_ms: i64,
    pub end_ms: i64,
    pub practitioner: Option<String>,
    pub location: Option<String>,
}

impl FreeSlot {
    pub fn minutes(&self) -> i64 {
        (self.end_ms - self.start_ms) / crate::uktime::MINUTE_MS
    }
}

/// Weights of the objective (see DESIGN.md, "Objective").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Lateness weight per priority 1..=4 (index 0 is priority 1).
    pub lateness: [i64; 4],
    /// Cost of one soft notice violation (same unit as weighted lateness days).
    pub short_notice: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            lateness: [8, 4, 2, 1],
            short_notice: 10,
        }
    }
}

/// Everything the solver needs besides appointments and slots. "Now" is a parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// The time of the rebooking run (ms since epoch). Never read from a clock.
    pub now_ms: i64,
    /// Minimum lead time: no new start before `now_ms + min_lead_minutes`.
    pub min_lead_minutes: i64,
    pub rules: Rules,
    pub weights: Weights,
    /// Extra minutes kept free around the patient's other appointments.
    pub clash_buffer_minutes: i64,
    /// Target for shortfall reports: an appointment placed more than this many days
    /// after its earliest allowed date (or after its hard deadline) counts as late.
    pub target_days: i64,
}

impl Params {
    pub fn new(now_ms: i64) -> Params {
        Params {
            now_ms,
            min_lead_minutes: 24 * 60,
            rules: Rules::england(),
            weights: Weights::default(),
            clash_buffer_minutes: 0,
            target_days: 28,
        }
    }

    /// No new start may be earlier than this instant.
    pub fn earliest_rebook_ms(&self) -> i64 {
        self.now_ms + self.min_lead_minutes * crate::uktime::MINUTE_MS
    }
}

/// A rebooking problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub params: Params,
    pub appointments: Vec<Postponed>,
    pub slots: Vec<FreeSlot>,
}

/// One rebooked appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Id of the postponed appointment this one replaces.
    pub appointment: String,
    pub slot: String,
    pub start_ms: i64,
    /// `start_ms + duration` (the new Appointment's end).
    pub end_ms: i64,
    /// Days from the original date to the new date (UK local dates), never negative.
    pub lateness_days: i64,
    /// Less than the reasonable notice and not waived.
    pub short_notice: bool,
    /// The hard deadline that applied, if any.
    pub deadline: Option<NaiveDate>,
    /// Deadlines that had already passed before the earliest possible rebooking
    /// (booked as early as possible instead; see `Rules::book_breached`).
    pub breached: Vec<crate::rules::DeadlineKind>,
}

/// Why an appointment could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The appointment's data is unusable (see `detail`).
    InvalidInput,
    /// No free slot of the appointment's service at all.
    NoSlotOfService,
    /// Slots of the service exist but none is long enough / with a suitable practitioner or location.
    NoSuitableSlot,
    /// The allowed window is empty: the deadline or regimen window ends before the earliest rebooking time.
    WindowClosed,
    /// Suitable slots exist, but none within the allowed window (before the deadline).
    NoSlotInWindow,
    /// Every suitable slot in the window clashes with the patient's other appointments.
    Clashes,
    /// Every suitable, clash-free slot in the window was taken by other patients
    /// (more urgent ones, or ones whose placement counts more in the objective).
    AllTaken,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::InvalidInput => "invalid input",
            Reason::NoSlotOfService => "no free slot of this service",
            Reason::NoSuitableSlot => "no slot long enough with a suitable practitioner/location",
            Reason::WindowClosed => "the deadline or regimen window has closed",
            Reason::NoSlotInWindow => "no suitable slot before the deadline",
            Reason::Clashes => "every suitable slot clashes with the patient's other appointments",
            Reason::AllTaken => "all suitable slots before the deadline are taken",
        }
    }
}

/// An appointment that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub appointment: String,
    pub priority: Priority,
    pub category: Category,
    pub reason: Reason,
    pub detail: String,
}

/// Capacity missing for one service in one ISO week.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    pub category: Category,
    /// Monday of the ISO week.
    pub week_start: NaiveDate,
    /// Valid appointments that were unplaced or placed late, attributed to the week of
    /// their due date (the hard deadline, or the earliest allowed date + `target_days`,
    /// whichever is first).
    pub appointments: u32,
    /// Their total duration.
    pub minutes: i64,
}

impl Shortfall {
    /// Whole hours, rounded up.
    pub fn hours(&self) -> i64 {
        (self.minutes + 59) / 60
    }

    /// "chemotherapy, week of 2026-10-12: 9 more chair-hours needed (7 appointments)".
    pub fn describe(&self) -> String {
        let unit = self.category.capacity_unit();
        format!(
            "{}, week of {}: {} more {} needed ({} appointment{})",
            self.category.label(),
            self.week_start,
            self.hours(),
            if self.hours() == 1 {
                unit.trim_end_matches('s')
            } else {
                unit
            },
            self.appointments,
            if self.appointments == 1 { "" } else { "s" }
        )
    }
}

/// The objective, compared lexicographically (see DESIGN.md):
/// 1. more placements of priority 1, then 2, 3, 4; among equals, more placements of
///    patients on a hard-deadline pathway, priority 1 first;
/// 2. less `cost` = priority-weighted lateness days + short-notice penalties;
/// 3. less `start_minutes` = total minutes from the earliest rebooking time to the new starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Objective {
    /// Placed appointments per priority 1..=4.
    pub placed: [u32; 4],
    /// Of those, appointments with a hard deadline (in force or already breached).
    pub placed_with_deadline: [u32; 4],
    pub unplaced: [u32; 4],
    pub weighted_lateness: i64,
    pub short_notice: u32,
    pub cost: i64,
    pub start_minutes: i64,
}

impl Objective {
    pub fn placed_total(&self) -> u32 {
        self.placed.iter().sum()
    }
    pub fn unplaced_total(&self) -> u32 {
        self.unplaced.iter().sum()
    }
    /// The lexicographic key: smaller is better.
    pub fn key(&self) -> ([i64; 4], [i64; 4], i64, i64) {
        let neg = |v: [u32; 4]| v.map(|x| -(x as i64));
        (
            neg(self.placed),
            neg(self.placed_with_deadline),
            self.cost,
            self.start_minutes,
        )
    }
    /// Whether `self` is at least as good as `other`.
    pub fn no_worse_than(&self, other: &Objective) -> bool {
        self.key() <= other.key()
    }
    /// Whether `self` is strictly better than `other`.
    pub fn better_than(&self, other: &Objective) -> bool {
        self.key() < other.key()
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, d, u) = (self.placed, self.placed_with_deadline, self.unplaced);
        write!(
            f,
            "placed p1..p4 {}/{}/{}/{} (with deadline {}/{}/{}/{}; unplaced {}/{}/{}/{}), cost {} \
             (weighted lateness {} + {} short-notice), start-minutes {}",
            p[0],
            p[1],
            p[2],
            p[3],
            d[0],
            d[1],
            d[2],
            d[3],
            u[0],
            u[1],
            u[2],
            u[3],
            self.cost,
            self.weighted_lateness,
            self.short_notice,
            self.start_minutes
        )
    }
}

/// A rebooking result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solution {
    /// Sorted by appointment id.
    pub assignments: Vec<Assignment>,
    /// Sorted by priority, then appointment id.
    pub unplaced: Vec<Unplaced>,
    /// Sorted by week, then category.
    pub shortfall: Vec<Shortfall>,
    pub objective: Objective,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_codes_match_hale_fhir() {
        // hale_fhir::codes::APPOINTMENT_CATEGORIES, in order.
        let codes: Vec<&str> = Category::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes, ["outpatient", "inpatient-procedure", "day-case", "chemotherapy"]);
        for c in Category::ALL {
            assert_eq!(Category::from_code(c.code()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.code());
        }
        assert_eq!(Category::from_code("surgery"), None);
        let ops: Vec<bool> = Category::ALL.iter().map(|c| c.is_operation()).collect();
        assert_eq!(ops, [false, true, true, false]);
    }

    #[test]
    fn shortfall_wording() {
        let s = |category, minutes, appointments| Shortfall {
            category,
            week_start: NaiveDate::from_ymd_opt(2026, 10, 12).unwrap(),
            appointments,
            minutes,
        };
        assert_eq!(
            s(Category::Chemotherapy, 9 * 60 - 30, 7).describe(),
            "chemotherapy, week of 2026-10-12: 9 more chair-hours needed (7 appointments)"
        );
        assert_eq!(
            s(Category::DayCase, 45, 1).describe(),
            "day case, week of 2026-10-12: 1 more theatre-hour needed (1 appointment)"
        );
    }
}
