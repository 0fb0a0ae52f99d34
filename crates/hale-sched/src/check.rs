//! An independent checker: every hard rule, re-derived from the instance and the
//! public rule functions, without the solver's indexes. Tests run it on every
//! solution; integration can run it before committing a rebooking.

use std::collections::{HashMap, HashSet};

use crate::model::{Instance, Interval, Postponed, Reason, Solution, PRIORITY_MAX, PRIORITY_MIN};
use crate::rules::{deadlines, lateness_days, short_notice, DeadlineKind};
use crate::uktime::{uk_date, uk_midnight, MINUTE_MS};

/// Every hard-rule violation in `sol` for `inst`, as readable sentences. Empty means valid.
///
/// Checks: each appointment is assigned or listed unplaced exactly once; each slot is
/// used at most once; the slot exists, has the appointment's service, is long enough,
/// and has a suitable practitioner and location; the new start is the slot's start and
/// no earlier than now + minimum lead; it is inside the regimen window and on or before
/// every hard deadline (a deadline already past at the earliest possible rebooking may
/// be dropped when `Rules::book_breached`); no overlap with the patient's other
/// appointments or other rebookings (with the clash buffer); and the reported
/// lateness, notice flags and objective totals match the assignments.
pub fn violations(inst: &Instance, sol: &Solution) -> Vec<String> {
    let mut out = Vec::new();
    let params = &inst.params;
    let buffer = params.clash_buffer_minutes.max(0) * MINUTE_MS;

    let mut apps: HashMap<&str, &Postponed> = HashMap::new();
    // How often each id occurs in the instance, and in the solution.
    let mut occurs: HashMap<&str, usize> = HashMap::new();
    let mut mentioned: HashMap<&str, usize> = HashMap::new();
    for a in &inst.appointments {
        apps.entry(a.id.as_str()).or_insert(a);
        *occurs.entry(a.id.as_str()).or_default() += 1;
    }
    let mut slots = HashMap::new();
    for s in &inst.slots {
        slots.entry(s.id.as_str()).or_insert(s);
    }

    let mut seen_app: HashSet<&str> = HashSet::new();
    let mut seen_slot: HashSet<&str> = HashSet::new();
    // patient -> (appointment id, interval) of rebookings
    let mut by_patient: HashMap<&str, Vec<(&str, Interval)>> = HashMap::new();
    let mut placed = [0u32; 4];
    let mut placed_dl = [0u32; 4];
    let mut cost = 0i64;
    let mut short_count = 0u32;
    let mut lateness_total = 0i64;

    for x in &sol.assignments {
        let id = x.appointment.as_str();
        let Some(a) = apps.get(id).copied() else {
            out.push(format!("{id}: assigned but not in the instance"));
            continue;
        };
        if !seen_app.insert(id) {
            out.push(format!("{id}: assigned more than once"));
        }
        *mentioned.entry(id).or_default() += 1;
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&a.priority) || a.duration_minutes <= 0 {
            out.push(format!("{id}: invalid appointment was assigned"));
            continue;
        }
        let Some(s) = slots.get(x.slot.as_str()).copied() else {
            out.push(format!("{id}: slot {} does not exist", x.slot));
            continue;
        };
        if !seen_slot.insert(s.id.as_str()) {
            out.push(format!("{id}: slot {} used more than once", s.id));
        }
        if s.category != a.category {
            out.push(format!("{id}: {} appointment in a {} slot", a.category, s.category));
        }
        if s.end_ms - s.start_ms < a.duration_minutes * MINUTE_MS {
            out.push(format!(
                "{id}: slot {} is {} min, appointment needs {}",
                s.id,
                s.minutes(),
                a.duration_minutes
            ));
        }
        if !a.practitioners.is_empty() && !s.practitioner.as_ref().is_some_and(|p| a.practitioners.contains(p)) {
            out.push(format!("{id}: practitioner {:?} not suitable", s.practitioner));
        }
        if !a.locations.is_empty() && !s.location.as_ref().is_some_and(|l| a.locations.contains(l)) {
            out.push(format!("{id}: location {:?} not suitable", s.location));
        }
        if x.start_ms != s.start_ms {
            out.push(format!(
                "{id}: start {} is not the slot's start {}",
                x.start_ms, s.start_ms
            ));
        }
        let end = x.start_ms + a.duration_minutes * MINUTE_MS;
        if x.end_ms != end {
            out.push(format!("{id}: end {} is not start + duration {}", x.end_ms, end));
        }
        let earliest = params.now_ms + params.min_lead_minutes * MINUTE_MS;
        if x.start_ms < earliest {
            out.push(format!("{id}: starts before now + minimum lead"));
        }
        let date = uk_date(x.start_ms);
        let mut from_ms = earliest;
        if let Some(w) = a.regimen_window {
            if date < w.earliest || date > w.latest {
                out.push(format!(
                    "{id}: {date} outside the regimen window {}..{}",
                    w.earliest, w.latest
                ));
            }
            from_ms = from_ms.max(uk_midnight(w.earliest));
        }
        let from_date = uk_date(from_ms);
        for d in deadlines(a, &params.rules) {
            let droppable = params.rules.book_breached && d.kind != DeadlineKind::RegimenWindow && d.date < from_date;
            if date > d.date && !droppable {
                out.push(format!("{id}: {date} is after the {:?} deadline {}", d.kind, d.date));
            }
        }
        let iv = Interval::new(x.start_ms, end);
        for b in &a.busy {
            let widened = Interval::new(b.start_ms - buffer, b.end_ms + buffer);
            if iv.overlaps(&widened) {
                out.push(format!(
                    "{id}: clashes with the patient's appointment at {}",
                    b.start_ms
                ));
            }
        }
        let mine = by_patient.entry(a.patient.as_str()).or_default();
        for (other, o) in mine.iter() {
            if iv.start_ms < o.end_ms + buffer && o.start_ms < iv.end_ms + buffer {
                out.push(format!("{id}: clashes with the patient's other rebooking {other}"));
            }
        }
        mine.push((id, iv));

        let lateness = lateness_days(a, x.start_ms);
        let short = short_notice(params, x.start_ms, a.notice_waived);
        if x.lateness_days != lateness {
            out.push(format!(
                "{id}: lateness {} reported, {} actual",
                x.lateness_days, lateness
            ));
        }
        if x.short_notice != short {
            out.push(format!("{id}: short-notice flag wrong"));
        }
        let pi = (a.priority - 1) as usize;
        placed[pi] += 1;
        placed_dl[pi] += !deadlines(a, &params.rules).is_empty() as u32;
        lateness_total += params.weights.lateness[pi] * lateness;
        short_count += short as u32;
        cost += params.weights.lateness[pi] * lateness + if short { params.weights.short_notice } else { 0 };
    }

    let mut unplaced = [0u32; 4];
    for u in &sol.unplaced {
        let id = u.appointment.as_str();
        if !apps.contains_key(id) {
            out.push(format!("{id}: listed unplaced but not in the instance"));
        }
        *mentioned.entry(id).or_default() += 1;
        if u.reason != Reason::InvalidInput && (PRIORITY_MIN..=PRIORITY_MAX).contains(&u.priority) {
            unplaced[(u.priority - 1) as usize] += 1;
        }
    }
    // Each occurrence in the instance is either assigned or listed unplaced, once.
    let mut ids: Vec<&str> = occurs.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let (n, m) = (occurs[id], mentioned.get(id).copied().unwrap_or(0));
        if n != m {
            out.push(format!(
                "{id}: occurs {n} times in the instance, {m} times in the solution"
            ));
        }
    }

    let o = &sol.objective;
    if o.placed != placed {
        out.push(format!(
            "objective: placed {:?} reported, {:?} actual",
            o.placed, placed
        ));
    }
    if o.placed_with_deadline != placed_dl {
        out.push(format!(
            "objective: placed with deadline {:?} reported, {:?} actual",
            o.placed_with_deadline, placed_dl
        ));
    }
    if o.unplaced != unplaced {
        out.push(format!(
            "objective: unplaced {:?} reported, {:?} actual",
            o.unplaced, unplaced
        ));
    }
    if o.cost != cost || o.weighted_lateness != lateness_total || o.short_notice != short_count {
        out.push(format!("objective: cost {} reported, {} actual", o.cost, cost));
    }
    let minutes: i64 = sol
        .assignments
        .iter()
        .map(|x| (x.start_ms - params.earliest_rebook_ms()) / MINUTE_MS)
        .sum();
    if o.start_minutes != minutes {
        out.push(format!(
            "objective: start minutes {} reported, {} actual",
            o.start_minutes, minutes
        ));
    }
    out
}
