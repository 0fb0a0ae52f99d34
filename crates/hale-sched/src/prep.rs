//! Indexes shared by the heuristic and the exact model: validated appointments
//! with their allowed windows, slots sorted per service, interned ids, and the
//! cost of placing an appointment in a slot. Also turns a raw assignment vector
//! into a [`Solution`] (reasons for the unplaced, shortfall, objective).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{Datelike, Duration, NaiveDate};

use crate::model::{
    Assignment, Category, Instance, Objective, Reason, Shortfall, Solution, Unplaced, PRIORITY_MAX, PRIORITY_MIN,
};
use crate::rules::{allowed, notice_from_ms, Allowed};
use crate::uktime::{iso_week_monday, uk_date, MINUTE_MS};

/// Per-appointment facts.
pub(crate) struct AppInfo {
    /// Why the appointment cannot be considered at all.
    pub invalid: Option<String>,
    pub allowed: Allowed,
    pub category: Category,
    pub priority_index: usize,
    pub dur_ms: i64,
    pub patient: u32,
    /// Interned suitable practitioners / locations (sorted); empty = any.
    pub pracs: Vec<u32>,
    pub locs: Vec<u32>,
    /// Busy intervals widened by the clash buffer.
    pub busy: Vec<(i64, i64)>,
    pub weight: i64,
    pub orig_day: i64,
    pub waived: bool,
}

/// Per-slot facts.
pub(crate) struct SlotInfo {
    pub valid: bool,
    pub category: Category,
    pub start: i64,
    pub len_ms: i64,
    pub day: i64,
    pub prac: Option<u32>,
    pub loc: Option<u32>,
    /// Position in `by_cat[category]`.
    pub pos: usize,
}

pub(crate) struct Prepared<'a> {
    pub inst: &'a Instance,
    pub apps: Vec<AppInfo>,
    pub slots: Vec<SlotInfo>,
    /// Valid slot indexes per category, sorted by (start, id).
    pub by_cat: [Vec<usize>; 4],
    /// Start instants parallel to `by_cat`, for binary search.
    pub starts: [Vec<i64>; 4],
    pub now_day: i64,
    pub notice_days: i64,
    pub notice_from_ms: i64,
    pub earliest_ms: i64,
    pub buffer_ms: i64,
    pub short_notice_cost: i64,
    pub n_patients: usize,
}

pub(crate) fn day_number(d: NaiveDate) -> i64 {
    d.num_days_from_ce() as i64
}

fn day_of(t_ms: i64) -> i64 {
    day_number(uk_date(t_ms))
}

impl<'a> Prepared<'a> {
    pub fn new(inst: &'a Instance) -> Prepared<'a> {
        let params = &inst.params;
        let buffer_ms = params.clash_buffer_minutes.max(0) * MINUTE_MS;
        let mut names: HashMap<&str, u32> = HashMap::new();
        let mut intern = |s: &'a str| -> u32 {
            let next = names.len() as u32;
            *names.entry(s).or_insert(next)
        };
        let mut patients: HashMap<&str, u32> = HashMap::new();

        let mut seen_slot: HashSet<&str> = HashSet::new();
        let mut slots = Vec::with_capacity(inst.slots.len());
        for s in &inst.slots {
            let valid = s.end_ms > s.start_ms && seen_slot.insert(s.id.as_str());
            slots.push(SlotInfo {
                valid,
                category: s.category,
                start: s.start_ms,
                len_ms: s.end_ms - s.start_ms,
                day: day_of(s.start_ms),
                prac: s.practitioner.as_deref().map(&mut intern),
                loc: s.location.as_deref().map(&mut intern),
                pos: usize::MAX,
            });
        }
        let mut by_cat: [Vec<usize>; 4] = Default::default();
        for (i, s) in slots.iter().enumerate() {
            if s.valid {
                by_cat[s.category.index()].push(i);
            }
        }
        for list in by_cat.iter_mut() {
            list.sort_by(|&a, &b| (slots[a].start, &inst.slots[a].id).cmp(&(slots[b].start, &inst.slots[b].id)));
        }
        let mut starts: [Vec<i64>; 4] = Default::default();
        for c in 0..4 {
            for (pos, &i) in by_cat[c].iter().enumerate() {
                slots[i].pos = pos;
            }
            starts[c] = by_cat[c].iter().map(|&i| slots[i].start).collect();
        }

        let mut seen_app: HashSet<&str> = HashSet::new();
        let mut apps = Vec::with_capacity(inst.appointments.len());
        for a in &inst.appointments {
            let mut invalid = None;
            if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&a.priority) {
                invalid = Some(format!("priority {} is outside 1..=4", a.priority));
            } else if a.duration_minutes <= 0 {
                invalid = Some(format!("duration {} minutes", a.duration_minutes));
            } else if !seen_app.insert(a.id.as_str()) {
                invalid = Some("duplicate appointment id".to_string());
            }
            let next = patients.len() as u32;
            let patient = *patients.entry(a.patient.as_str()).or_insert(next);
            let mut pracs: Vec<u32> = a.practitioners.iter().map(|p| intern(p)).collect();
            pracs.sort_unstable();
            pracs.dedup();
            let mut locs: Vec<u32> = a.locations.iter().map(|l| intern(l)).collect();
            locs.sort_unstable();
            locs.dedup();
            let mut busy: Vec<(i64, i64)> = a
                .busy
                .iter()
                .map(|b| (b.start_ms - buffer_ms, b.end_ms + buffer_ms))
                .collect();
            busy.sort_unstable();
            let priority_index = (a.priority.clamp(PRIORITY_MIN, PRIORITY_MAX) - 1) as usize;
            apps.push(AppInfo {
                invalid,
                allowed: allowed(a, params),
                category: a.category,
                priority_index,
                dur_ms: a.duration_minutes.max(0) * MINUTE_MS,
                patient,
                pracs,
                locs,
                busy,
                weight: params.weights.lateness[priority_index],
                orig_day: day_of(a.original_start_ms),
                waived: a.notice_waived,
            });
        }

        Prepared {
            inst,
            apps,
            slots,
            by_cat,
            starts,
            now_day: day_of(params.now_ms),
            notice_days: params.rules.notice_days,
            notice_from_ms: notice_from_ms(params),
            earliest_ms: params.earliest_rebook_ms(),
            buffer_ms,
            short_notice_cost: params.weights.short_notice,
            n_patients: patients.len(),
        }
    }

    /// On a hard-deadline pathway: a deadline in force, or one already breached.
    pub fn has_deadline(&self, a: usize) -> bool {
        let w = &self.apps[a].allowed;
        w.deadline.is_some() || !w.breached.is_empty()
    }

    /// The slot can host the appointment (service, length, practitioner, location), ignoring time rules.
    pub fn fits(&self, a: usize, s: usize) -> bool {
        let (ai, si) = (&self.apps[a], &self.slots[s]);
        si.valid
            && si.category == ai.category
            && si.len_ms >= ai.dur_ms
            && (ai.pracs.is_empty() || si.prac.is_some_and(|p| ai.pracs.binary_search(&p).is_ok()))
            && (ai.locs.is_empty() || si.loc.is_some_and(|l| ai.locs.binary_search(&l).is_ok()))
    }

    pub fn in_window(&self, a: usize, s: usize) -> bool {
        self.apps[a].allowed.contains(self.slots[s].start)
    }

    /// Whether placing `a` in `s` overlaps one of the patient's fixed appointments.
    pub fn clashes_fixed(&self, a: usize, s: usize) -> bool {
        let start = self.slots[s].start;
        let end = start + self.apps[a].dur_ms;
        self.apps[a].busy.iter().any(|&(b0, b1)| b0 < end && start < b1)
    }

    /// Hard-feasible ignoring occupancy and the patient's other rebookings.
    pub fn feasible(&self, a: usize, s: usize) -> bool {
        self.apps[a].invalid.is_none() && self.fits(a, s) && self.in_window(a, s) && !self.clashes_fixed(a, s)
    }

    pub fn short_notice(&self, a: usize, s: usize) -> bool {
        !self.apps[a].waived && self.slots[s].day - self.now_day < self.notice_days
    }

    pub fn lateness(&self, a: usize, s: usize) -> i64 {
        (self.slots[s].day - self.apps[a].orig_day).max(0)
    }

    /// Tier-2 cost: priority-weighted lateness days plus the short-notice penalty.
    pub fn cost(&self, a: usize, s: usize) -> i64 {
        self.apps[a].weight * self.lateness(a, s)
            + if self.short_notice(a, s) {
                self.short_notice_cost
            } else {
                0
            }
    }

    /// Tier-3 cost: minutes from the earliest rebooking time to the start.
    pub fn start_minutes(&self, s: usize) -> i64 {
        (self.slots[s].start - self.earliest_ms) / MINUTE_MS
    }

    /// Whether the two rebooked appointments of one patient would overlap (with the buffer).
    pub fn pair_clash(&self, a: usize, sa: usize, b: usize, sb: usize) -> bool {
        let (a0, a1) = (self.slots[sa].start, self.slots[sa].start + self.apps[a].dur_ms);
        let (b0, b1) = (self.slots[sb].start, self.slots[sb].start + self.apps[b].dur_ms);
        a0 < b1 + self.buffer_ms && b0 < a1 + self.buffer_ms
    }

    /// First position in `by_cat[c]` whose start is at or after `t`.
    pub fn pos_at(&self, c: Category, t: i64) -> usize {
        self.starts[c.index()].partition_point(|&x| x < t)
    }

    /// Turns `assign[a] = Some(slot index)` into a full solution.
    pub fn build_solution(&self, assign: &[Option<usize>]) -> Solution {
        let inst = self.inst;
        let mut objective = Objective::default();
        let mut assignments = Vec::new();
        let mut unplaced = Vec::new();
        // (week, category) -> (appointments, minutes)
        let mut short: BTreeMap<(NaiveDate, Category), (u32, i64)> = BTreeMap::new();
        let target_days = inst.params.target_days.max(0);

        // Patient -> placed (appointment, slot), to explain clashes.
        let mut placed_by_patient: HashMap<u32, Vec<(usize, usize)>> = HashMap::new();
        for (a, s) in assign.iter().enumerate() {
            if let Some(s) = *s {
                placed_by_patient.entry(self.apps[a].patient).or_default().push((a, s));
            }
        }
        let mut occupied = vec![false; self.slots.len()];
        for s in assign.iter().flatten() {
            occupied[*s] = true;
        }

        for (a, ap) in inst.appointments.iter().enumerate() {
            let info = &self.apps[a];
            let p = info.priority_index;
            // Due date: deadline, or earliest allowed date + target days, whichever is first.
            let from_date = uk_date(info.allowed.from_ms);
            let mut due = from_date + Duration::days(target_days);
            if let Some(d) = info.allowed.deadline {
                due = due.min(d.date).max(from_date);
            }
            match assign[a] {
                Some(s) => {
                    let slot = &inst.slots[s];
                    let lateness = self.lateness(a, s);
                    let short_notice = self.short_notice(a, s);
                    objective.placed[p] += 1;
                    objective.placed_with_deadline[p] += self.has_deadline(a) as u32;
                    objective.weighted_lateness += info.weight * lateness;
                    objective.short_notice += short_notice as u32;
                    objective.cost += self.cost(a, s);
                    objective.start_minutes += self.start_minutes(s);
                    assignments.push(Assignment {
                        appointment: ap.id.clone(),
                        slot: slot.id.clone(),
                        start_ms: slot.start_ms,
                        end_ms: slot.start_ms + info.dur_ms,
                        lateness_days: lateness,
                        short_notice,
                        deadline: info.allowed.deadline.map(|d| d.date),
                        breached: info.allowed.breached.iter().map(|d| d.kind).collect(),
                    });
                    if uk_date(slot.start_ms) > due {
                        let e = short.entry((iso_week_monday(due), ap.category)).or_default();
                        e.0 += 1;
                        e.1 += ap.duration_minutes;
                    }
                }
                None => {
                    objective.unplaced[p] += info.invalid.is_none() as u32;
                    let (reason, detail) = self.explain(a, &occupied, &placed_by_patient);
                    unplaced.push(Unplaced {
                        appointment: ap.id.clone(),
                        priority: ap.priority,
                        category: ap.category,
                        reason,
                        detail,
                    });
                    if info.invalid.is_none() {
                        let e = short.entry((iso_week_monday(due), ap.category)).or_default();
                        e.0 += 1;
                        e.1 += ap.duration_minutes;
                    }
                }
            }
        }
        objective.cost = objective.weighted_lateness + objective.short_notice as i64 * self.short_notice_cost;
        assignments.sort_by(|x, y| x.appointment.cmp(&y.appointment));
        unplaced.sort_by(|x, y| (x.priority, &x.appointment).cmp(&(y.priority, &y.appointment)));
        let shortfall = short
            .into_iter()
            .map(|((week_start, category), (appointments, minutes))| Shortfall {
                category,
                week_start,
                appointments,
                minutes,
            })
            .collect();
        Solution {
            assignments,
            unplaced,
            shortfall,
            objective,
        }
    }

    /// Why `a` is unplaced, given the final occupancy.
    fn explain(
        &self,
        a: usize,
        occupied: &[bool],
        placed_by_patient: &HashMap<u32, Vec<(usize, usize)>>,
    ) -> (Reason, String) {
        let info = &self.apps[a];
        if let Some(why) = &info.invalid {
            return (Reason::InvalidInput, why.clone());
        }
        let window = match info.allowed.deadline {
            Some(d) => format!("deadline {} ({})", d.date, d.kind.describe()),
            None => "no deadline".to_string(),
        };
        if info.allowed.closed {
            return (Reason::WindowClosed, window);
        }
        let list = &self.by_cat[info.category.index()];
        if list.is_empty() {
            return (
                Reason::NoSlotOfService,
                format!("no free {} slot", info.category.label()),
            );
        }
        if !list.iter().any(|&s| self.fits(a, s)) {
            return (
                Reason::NoSuitableSlot,
                format!(
                    "{} {} slots, none of {} minutes with a suitable practitioner/location",
                    list.len(),
                    info.category.label(),
                    info.dur_ms / MINUTE_MS
                ),
            );
        }
        let lo = self.pos_at(info.category, info.allowed.from_ms);
        let hi = info
            .allowed
            .until_ms
            .map_or(list.len(), |u| self.pos_at(info.category, u));
        let in_window: Vec<usize> = list[lo..hi.max(lo)]
            .iter()
            .copied()
            .filter(|&s| self.fits(a, s) && self.in_window(a, s))
            .collect();
        if in_window.is_empty() {
            return (
                Reason::NoSlotInWindow,
                format!("{window}; no suitable slot in the window"),
            );
        }
        let siblings = placed_by_patient.get(&info.patient);
        let clash_free: Vec<usize> = in_window
            .iter()
            .copied()
            .filter(|&s| {
                !self.clashes_fixed(a, s)
                    && !siblings.is_some_and(|v| v.iter().any(|&(b, sb)| b != a && self.pair_clash(a, s, b, sb)))
            })
            .collect();
        if clash_free.is_empty() {
            return (
                Reason::Clashes,
                format!(
                    "{window}; all {} suitable slots clash with the patient's other appointments",
                    in_window.len()
                ),
            );
        }
        let taken = clash_free.iter().filter(|&&s| occupied[s]).count();
        (
            Reason::AllTaken,
            format!(
                "{window}; {} suitable slots in the window, {taken} taken by other patients",
                clash_free.len()
            ),
        )
    }
}

/// A set of free positions (bitset) with fast "next free at or after".
#[derive(Clone)]
pub(crate) struct FreeSet {
    words: Vec<u64>,
    len: usize,
}

impl FreeSet {
    pub fn all_free(len: usize) -> FreeSet {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        match len % 64 {
            0 => {}
            rem => {
                if let Some(last) = words.last_mut() {
                    *last = (1u64 << rem) - 1;
                }
            }
        }
        FreeSet { words, len }
    }

    pub fn set_free(&mut self, i: usize, free: bool) {
        if free {
            self.words[i / 64] |= 1 << (i % 64);
        } else {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    pub fn next_free(&self, from: usize) -> Option<usize> {
        if from >= self.len {
            return None;
        }
        let mut w = from / 64;
        let mut bits = self.words[w] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            if w >= self.words.len() {
                return None;
            }
            bits = self.words[w];
        }
    }

    pub fn any(&self) -> bool {
        self.words.iter().any(|&w| w != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::FreeSet;

    #[test]
    fn free_set() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            let mut f = FreeSet::all_free(len);
            assert_eq!(f.next_free(0), if len > 0 { Some(0) } else { None });
            for i in 0..len {
                if i % 3 != 0 {
                    f.set_free(i, false);
                }
            }
            for from in 0..len {
                let want = (from..len).find(|i| i % 3 == 0);
                assert_eq!(f.next_free(from), want, "len {len} from {from}");
            }
            assert_eq!(f.next_free(len), None);
            assert_eq!(f.any(), len > 0);
        }
    }
}
