//! What a pack shows, read out of FHIR resources: plain values, ready to lay
//! out as PDF and CSV. Nothing here touches the store.

use chrono::NaiveDate;

/// Everything one pack shows.
#[derive(Debug, Clone)]
pub(crate) struct PackData {
    pub(crate) site: String,
    pub(crate) site_name: String,
    pub(crate) store_index: u64,
    /// When the store last applied a change, as far as it records (ms).
    pub(crate) last_change_ms: Option<i64>,
    pub(crate) now_ms: i64,
    pub(crate) first_day: NaiveDate,
    pub(crate) last_day: NaiveDate,
    /// The covered window in UTC ms, `[from_ms, to_ms)`.
    pub(crate) from_ms: i64,
    pub(crate) to_ms: i64,
    /// Clinic sessions in print order.
    pub(crate) sessions: Vec<Session>,
    /// Patients on the lists, in print order (surname, given names, NHS number).
    pub(crate) patients: Vec<PatientCard>,
}

/// One clinic on one day.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) day: NaiveDate,
    /// The Schedule, when the session comes from one.
    pub(crate) schedule_id: Option<String>,
    pub(crate) location_id: Option<String>,
    /// The clinic's name (its Location's name).
    pub(crate) clinic: String,
    /// The Schedule's practitioner, when it names one.
    pub(crate) lead: Option<String>,
    /// Service type text, e.g. "Cardiology".
    pub(crate) service: Option<String>,
    /// First slot start and last slot end that day (ms).
    pub(crate) start_ms: Option<i64>,
    pub(crate) end_ms: Option<i64>,
    pub(crate) slots: usize,
    /// Booked appointments in time order.
    pub(crate) entries: Vec<Entry>,
}

impl Session {
    /// Sort key for the start of the session.
    pub(crate) fn sort_start_ms(&self) -> i64 {
        let first_entry = self.entries.first().map(|e| e.start_ms);
        match (self.start_ms, first_entry) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(i64::MAX),
        }
    }
}

/// One appointment on a clinic list.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) appointment_id: String,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: Option<i64>,
    pub(crate) status: String,
    pub(crate) patient_id: Option<String>,
    /// The slot's comment (e.g. "Chair 2").
    pub(crate) slot_note: Option<String>,
    pub(crate) category: String,
    pub(crate) priority: Option<u64>,
    pub(crate) clinician: Option<String>,
    pub(crate) description: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PersonName {
    pub(crate) family: String,
    pub(crate) given: String,
    pub(crate) prefix: String,
    pub(crate) text: String,
}

impl PersonName {
    /// "OKAFOR, Ada Mary (Mrs)": surname first in capitals, as clinic lists print it.
    pub(crate) fn list_form(&self) -> String {
        let mut s = if self.family.is_empty() {
            if self.given.is_empty() {
                if self.text.is_empty() {
                    "(no name recorded)".to_string()
                } else {
                    self.text.clone()
                }
            } else {
                self.given.clone()
            }
        } else {
            let mut s = self.family.to_uppercase();
            if !self.given.is_empty() {
                s.push_str(", ");
                s.push_str(&self.given);
            }
            s
        };
        if !self.prefix.is_empty() {
            s.push_str(&format!(" ({})", self.prefix));
        }
        s
    }

    /// "Dr Ada Okafor", for clinicians and next of kin.
    pub(crate) fn natural_form(&self) -> String {
        let parts: Vec<&str> = [self.prefix.as_str(), self.given.as_str(), self.family.as_str()]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            self.text.clone()
        } else {
            parts.join(" ")
        }
    }
}

/// A phone number or email with its use ("mobile", "home").
#[derive(Debug, Clone)]
pub(crate) struct ContactPoint {
    pub(crate) value: String,
    pub(crate) usage: Option<String>,
}

impl Kin {
    /// "Wife (next of kin)".
    pub(crate) fn role(&self) -> String {
        if self.next_of_kin && self.relationship != "Next of kin" {
            format!("{} (next of kin)", self.relationship)
        } else {
            self.relationship.clone()
        }
    }
}

impl ContactPoint {
    /// "07700 900123 (mobile)".
    pub(crate) fn display(&self) -> String {
        match &self.usage {
            Some(u) => format!("{} ({u})", self.value),
            None => self.value.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Kin {
    /// Who they are ("Wife", "Friend"); "Next of kin" or "Contact" when nothing more is recorded.
    pub(crate) relationship: String,
    /// Recorded as next of kin (HL7 v2-0131 `N`).
    pub(crate) next_of_kin: bool,
    pub(crate) name: String,
    pub(crate) phones: Vec<ContactPoint>,
    pub(crate) address: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Allergy {
    pub(crate) substance: String,
    pub(crate) reaction: Option<String>,
    pub(crate) severity: Option<String>,
    pub(crate) criticality: Option<String>,
    pub(crate) verification: Option<String>,
    pub(crate) recorded: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct LabResult {
    pub(crate) test: String,
    pub(crate) value: String,
    /// Interpretation when not normal: "H", "L", "HH"...
    pub(crate) flag: Option<String>,
    pub(crate) range: Option<String>,
    pub(crate) when_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub(crate) struct ImagingReport {
    pub(crate) study: String,
    pub(crate) when_ms: Option<i64>,
    pub(crate) conclusion: String,
    pub(crate) status: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) title: String,
    pub(crate) when_ms: Option<i64>,
    pub(crate) author: Option<String>,
    pub(crate) text: String,
    /// The text was cut at `NOTE_CHARS_MAX`.
    pub(crate) cut: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Upcoming {
    pub(crate) start_ms: i64,
    pub(crate) place: String,
    pub(crate) clinician: Option<String>,
    pub(crate) status: String,
    pub(crate) description: Option<String>,
}

/// An active alert (Flag): printed first, in a box.
#[derive(Debug, Clone)]
pub(crate) struct Alert {
    pub(crate) text: String,
    pub(crate) category: Option<String>,
    pub(crate) since: Option<String>,
}

/// An active problem (Condition).
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub(crate) text: String,
    pub(crate) onset: Option<String>,
}

/// A current medicine: an active MedicationRequest (prescribed) or
/// MedicationStatement (reported by the patient or another carer).
#[derive(Debug, Clone)]
pub(crate) struct Medicine {
    pub(crate) name: String,
    pub(crate) dose: Option<String>,
    pub(crate) route: Option<String>,
    /// "twice daily (08:00, 18:00)", "when required".
    pub(crate) frequency: Option<String>,
    /// The dosage text as written.
    pub(crate) instructions: Option<String>,
    /// "prescribed" or "reported".
    pub(crate) source: &'static str,
    /// For a course with dates (a chemotherapy cycle, an admission): when it runs.
    pub(crate) dates: Option<String>,
    /// Given on a ward or chemotherapy unit (inpatient category): goes on the drug chart.
    pub(crate) inpatient: bool,
}

/// One scheduled dose on the drug chart, with space for who gave it and when.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ChartDose {
    pub(crate) day: NaiveDate,
    /// "08:00", or "when required".
    pub(crate) time: String,
    pub(crate) medicine: String,
    pub(crate) dose: String,
    pub(crate) route: String,
}

/// Counts of items not printed because of the per-patient limits.
#[derive(Debug, Clone, Default)]
pub(crate) struct Omitted {
    pub(crate) alerts: usize,
    pub(crate) problems: usize,
    pub(crate) medicines: usize,
    pub(crate) chart: usize,
    pub(crate) allergies: usize,
    pub(crate) results: usize,
    pub(crate) imaging: usize,
    pub(crate) notes: usize,
    pub(crate) upcoming: usize,
    pub(crate) contacts: usize,
}

/// One patient's summary.
#[derive(Debug, Clone)]
pub(crate) struct PatientCard {
    pub(crate) id: String,
    pub(crate) name: PersonName,
    pub(crate) nhs_number: Option<String>,
    pub(crate) birth_date: Option<NaiveDate>,
    /// As stored, when it is not a full date.
    pub(crate) birth_text: Option<String>,
    pub(crate) gender: Option<String>,
    pub(crate) deceased: Option<String>,
    pub(crate) phones: Vec<ContactPoint>,
    pub(crate) emails: Vec<ContactPoint>,
    pub(crate) addresses: Vec<String>,
    pub(crate) gp: Option<String>,
    pub(crate) kin: Vec<Kin>,
    pub(crate) alerts: Vec<Alert>,
    pub(crate) problems: Vec<Problem>,
    pub(crate) medicines: Vec<Medicine>,
    /// The drug chart for the pack's days (inpatients and chemotherapy patients).
    pub(crate) chart: Vec<ChartDose>,
    pub(crate) allergies: Vec<Allergy>,
    pub(crate) results: Vec<LabResult>,
    pub(crate) imaging: Vec<ImagingReport>,
    pub(crate) notes: Vec<Note>,
    pub(crate) upcoming: Vec<Upcoming>,
    pub(crate) omitted: Omitted,
}

/// `9991234567` as `999 123 4567`; other values unchanged.
pub(crate) fn format_nhs(n: &str) -> String {
    if n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
    } else {
        n.to_string()
    }
}

/// Priority label (Hale's `Appointment.priority` codes).
pub(crate) fn priority_label(p: Option<u64>) -> String {
    match p {
        Some(1) => "1 Emergency/2WW".into(),
        Some(2) => "2 Urgent".into(),
        Some(3) => "3 Soon".into(),
        Some(4) => "4 Routine".into(),
        Some(n) => n.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(family: &str, given: &str, prefix: &str, text: &str) -> PersonName {
        PersonName {
            family: family.into(),
            given: given.into(),
            prefix: prefix.into(),
            text: text.into(),
        }
    }

    #[track_caller]
    fn check_name(n: PersonName, list: &str, natural: &str) {
        assert_eq!(n.list_form(), list);
        assert_eq!(n.natural_form(), natural);
    }

    #[test]
    fn name_cases() {
        check_name(
            name("Okafor", "Ada Mary", "Mrs", ""),
            "OKAFOR, Ada Mary (Mrs)",
            "Mrs Ada Mary Okafor",
        );
        check_name(name("Brontë", "Zoë", "", ""), "BRONTË, Zoë", "Zoë Brontë");
        check_name(name("", "Cher", "", ""), "Cher", "Cher");
        check_name(name("", "", "", "Baby of Smith"), "Baby of Smith", "Baby of Smith");
        check_name(name("", "", "", ""), "(no name recorded)", "");
    }

    #[test]
    fn nhs_and_priority_cases() {
        for (input, want) in [
            ("9434765919", "943 476 5919"),
            ("123", "123"),
            ("94347659AB", "94347659AB"),
        ] {
            assert_eq!(format_nhs(input), want);
        }
        for (p, want) in [
            (Some(1), "1 Emergency/2WW"),
            (Some(4), "4 Routine"),
            (Some(9), "9"),
            (None, ""),
        ] {
            assert_eq!(priority_label(p), want);
        }
    }
}
