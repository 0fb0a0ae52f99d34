//! Seeded synthetic backlogs for tests and `hale bench rebook`.
//!
//! Modelled on a health board's outage: two clinic days cancelled (Thu 1 and Fri 2
//! October 2026), rebooking run on Monday 5 October at 08:00. The mix follows the
//! Glasgow 2013 outage (mostly outpatients, some inpatient procedures and day cases,
//! about 7% chemotherapy). Free capacity over the following weeks is a little below
//! demand and lighter in the first weeks (clinics there are mostly booked already),
//! so some appointments stay unplaced and show up in the shortfall report.

use chrono::{Duration, NaiveDate};

use crate::letters::Calendar;
use crate::model::{Category, DateWindow, FreeSlot, Instance, Interval, Params, Postponed};
use crate::uktime::{uk_at, MINUTE_MS};

/// A small, fast, seedable PRNG (SplitMix64). Same seed, same sequence, on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Index drawn with the given weights.
    pub fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// Generator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    pub n: usize,
    pub seed: u64,
    /// Free slots per postponed appointment, per service.
    pub capacity: f64,
    /// Weeks of future clinics offered.
    pub weeks: i64,
    /// Share of patients with another backlog appointment (same-patient clashes).
    pub repeat_patients: f64,
}

impl GenOptions {
    pub fn new(n: usize, seed: u64) -> GenOptions {
        GenOptions {
            n,
            seed,
            capacity: 0.97,
            weeks: 6,
            repeat_patients: 0.05,
        }
    }
}

/// A backlog of `n` postponed appointments with free slots, reproducible from `seed`.
pub fn generate_backlog(n: usize, seed: u64) -> Instance {
    generate(&GenOptions::new(n, seed))
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("valid date")
}

const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];

/// Practitioner pools: (ids, home site index).
struct Pool {
    ids: Vec<String>,
}

impl Pool {
    fn new(prefix: &str, n: usize) -> Pool {
        Pool {
            ids: (0..n.max(1)).map(|i| format!("{prefix}-{i}")).collect(),
        }
    }
    fn site(&self, i: usize) -> &'static str {
        SITES[i % SITES.len()]
    }
}

pub fn generate(opts: &GenOptions) -> Instance {
    let mut rng = Rng::new(opts.seed);
    let outage = [date("2026-10-01"), date("2026-10-02")];
    let run_day = date("2026-10-05");
    let now_ms = uk_at(run_day, 8, 0);
    let calendar = Calendar::england_and_wales();

    // Categories first, so pools can be sized.
    let cats: Vec<Category> = (0..opts.n)
        .map(|_| match rng.pick(&[0.82, 0.03, 0.08, 0.07]) {
            0 => Category::Outpatient,
            1 => Category::InpatientProcedure,
            2 => Category::DayCase,
            _ => Category::Chemotherapy,
        })
        .collect();
    let count = |c: Category| cats.iter().filter(|&&x| x == c).count();
    let pools = [
        Pool::new("clin", count(Category::Outpatient).div_ceil(25).max(2)),
        Pool::new("surg", count(Category::InpatientProcedure).div_ceil(6)),
        Pool::new("dcsurg", count(Category::DayCase).div_ceil(12)),
        Pool::new("chair", 1),
    ];

    // Working days in the horizon (clinics run Monday to Friday, not on bank holidays).
    let first = run_day + Duration::days(1);
    let days: Vec<NaiveDate> = (0..opts.weeks * 7)
        .map(|i| first + Duration::days(i))
        .filter(|d| calendar.is_working_day(*d))
        .collect();

    let mut appointments = Vec::with_capacity(opts.n);
    let mut patients = 0usize;
    for (k, &cat) in cats.iter().enumerate() {
        let patient = if patients > 0 && rng.chance(opts.repeat_patients) {
            format!("pat-{}", rng.range(0, patients as i64 - 1))
        } else {
            patients += 1;
            format!("pat-{}", patients - 1)
        };
        let priority = 1 + match cat {
            Category::Outpatient => rng.pick(&[0.08, 0.2, 0.27, 0.45]),
            Category::InpatientProcedure | Category::DayCase => rng.pick(&[0.1, 0.25, 0.3, 0.35]),
            Category::Chemotherapy => rng.pick(&[0.5, 0.4, 0.1, 0.0]),
        } as u8;
        let duration_minutes = match cat {
            Category::Outpatient => [15, 20, 30][rng.pick(&[0.45, 0.25, 0.3])],
            Category::DayCase => [45, 60, 90, 120][rng.pick(&[0.3, 0.3, 0.25, 0.15])],
            Category::InpatientProcedure => [90, 120, 180, 240][rng.pick(&[0.25, 0.25, 0.25, 0.25])],
            Category::Chemotherapy => [60, 120, 180, 240][rng.pick(&[0.3, 0.3, 0.25, 0.15])],
        };
        let day = outage[rng.range(0, 1) as usize];
        let quarter = rng.range(0, 28);
        let original_start_ms = uk_at(day, 9, 0) + quarter * 15 * MINUTE_MS;
        let rtt_referral = (cat != Category::Chemotherapy && rng.chance(0.6))
            .then(|| day - Duration::days(126) + Duration::days(rng.range(1, 116)));
        let cancer = priority <= 2 && (cat == Category::Chemotherapy || rng.chance(0.3));
        let decision_to_treat = cancer.then(|| day - Duration::days(rng.range(0, 25)));
        let regimen_window = (cat == Category::Chemotherapy).then(|| {
            let earliest = day + Duration::days(rng.range(-3, 6));
            DateWindow {
                earliest,
                latest: earliest + Duration::days(rng.range(5, 18)),
            }
        });
        let pool = &pools[cat.index()];
        let mut practitioners = Vec::new();
        let mut locations = Vec::new();
        match cat {
            Category::Outpatient if rng.chance(0.6) => {
                // A specialty: three consecutive clinicians.
                let base = (rng.range(0, pool.ids.len() as i64 - 1) as usize / 3) * 3;
                practitioners = (base..(base + 3).min(pool.ids.len()))
                    .map(|i| pool.ids[i].clone())
                    .collect();
            }
            Category::InpatientProcedure | Category::DayCase if rng.chance(0.8) => {
                let i = rng.range(0, pool.ids.len() as i64 - 1) as usize;
                practitioners.push(pool.ids[i].clone());
                if pool.ids.len() > 1 && rng.chance(0.5) {
                    practitioners.push(pool.ids[(i + 1) % pool.ids.len()].clone());
                }
            }
            _ => {}
        }
        if rng.chance(0.2) {
            locations.push(SITES[rng.range(0, 2) as usize].to_string());
        }
        let mut busy = Vec::new();
        for _ in 0..rng.pick(&[0.5, 0.35, 0.15]) {
            let d = days[rng.range(0, days.len() as i64 - 1) as usize];
            let start = uk_at(d, 9, 0) + rng.range(0, 14) * 30 * MINUTE_MS;
            busy.push(Interval::new(start, start + rng.range(1, 2) * 30 * MINUTE_MS));
        }
        appointments.push(Postponed {
            id: format!("appt-{k}"),
            patient,
            category: cat,
            priority,
            duration_minutes,
            original_start_ms,
            cancelled_on_the_day: rng.chance(0.7),
            rtt_referral,
            decision_to_treat,
            regimen_window,
            practitioners,
            locations,
            busy,
            notice_waived: rng.chance(0.1),
        });
    }

    // Free slots: per service, about `capacity` per appointment, spread over the
    // working days with a ramp (first weeks mostly booked already).
    let mut slots = Vec::new();
    for cat in Category::ALL {
        let n_slots = (count(cat) as f64 * opts.capacity).round() as usize;
        if n_slots == 0 || days.is_empty() {
            continue;
        }
        let weights: Vec<f64> = (0..days.len())
            .map(|i| 0.35 + (i as f64 / (days.len() as f64 * 0.5)).min(1.0))
            .collect();
        let total: f64 = weights.iter().sum();
        let pool = &pools[cat.index()];
        // Minutes already used per (resource, day).
        let mut used = vec![vec![0i64; days.len()]; pool.ids.len().max(SITES.len())];
        let mut placed = 0usize;
        let mut acc = 0.0;
        for (di, &d) in days.iter().enumerate() {
            acc += weights[di] / total * n_slots as f64;
            let target = if di + 1 == days.len() {
                n_slots
            } else {
                acc.round() as usize
            };
            while placed < target {
                let len = match cat {
                    Category::Outpatient => [30, 20][rng.pick(&[0.8, 0.2])],
                    Category::DayCase => [60, 120][rng.pick(&[0.5, 0.5])],
                    Category::InpatientProcedure => [180, 240][rng.pick(&[0.5, 0.5])],
                    Category::Chemotherapy => [120, 240][rng.pick(&[0.5, 0.5])],
                };
                let (resource, practitioner, location) = if cat == Category::Chemotherapy {
                    let site = rng.range(0, 1) as usize;
                    (site, None, SITES[site])
                } else {
                    let r = rng.range(0, pool.ids.len() as i64 - 1) as usize;
                    (r, Some(pool.ids[r].clone()), pool.site(r))
                };
                let offset = used[resource][di];
                used[resource][di] += len;
                let start_ms = uk_at(d, 9, 0) + offset * MINUTE_MS;
                slots.push(FreeSlot {
                    id: format!("slot-{}-{}", cat.code(), placed),
                    schedule: format!("sched-{}-{}", cat.code(), practitioner.as_deref().unwrap_or(location)),
                    category: cat,
                    start_ms,
                    end_ms: start_ms + len * MINUTE_MS,
                    practitioner,
                    location: Some(location.to_string()),
                });
                placed += 1;
            }
        }
    }

    let mut params = Params::new(now_ms);
    params.min_lead_minutes = 24 * 60;
    Instance {
        params,
        appointments,
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_stable() {
        let mut r = Rng::new(42);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut r2 = Rng::new(42);
        assert_eq!(first, (0..3).map(|_| r2.next_u64()).collect::<Vec<_>>());
        let mut r3 = Rng::new(43);
        assert_ne!(first[0], r3.next_u64());
        for _ in 0..1000 {
            let x = r.range(-3, 6);
            assert!((-3..=6).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn generator_is_deterministic_and_shaped() {
        let a = generate_backlog(709, 7);
        assert_eq!(a, generate_backlog(709, 7));
        assert_ne!(a, generate_backlog(709, 8));
        assert_eq!(a.appointments.len(), 709);
        let share = |c: Category| a.appointments.iter().filter(|x| x.category == c).count() as f64 / 709.0;
        assert!(
            share(Category::Outpatient) > 0.7,
            "outpatients {}",
            share(Category::Outpatient)
        );
        assert!((0.03..0.12).contains(&share(Category::Chemotherapy)));
        assert!(a.slots.iter().all(|s| s.end_ms > s.start_ms));
        let ids: std::collections::HashSet<_> = a.slots.iter().map(|s| &s.id).collect();
        assert_eq!(ids.len(), a.slots.len(), "slot ids are unique");
        assert!(a.appointments.iter().all(|x| (1..=4).contains(&x.priority)));
    }
}
