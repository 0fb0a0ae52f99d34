//! Hand-made rebooking scenarios, each solved by the heuristic and the exact model;
//! both are checked with `violations` and must agree on the objective.

use chrono::NaiveDate;
use hale_sched::uktime::uk_at;
use hale_sched::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn at(date: &str, hh: u32, mm: u32) -> i64 {
    uk_at(d(date), hh, mm)
}

/// Run on Monday 5 October 2026 at 08:00 with a 24-hour minimum lead (England).
fn params() -> Params {
    let mut p = Params::new(at("2026-10-05", 8, 0));
    p.min_lead_minutes = 24 * 60;
    p
}

/// A 30-minute appointment postponed from Thursday 1 October 10:00, no rules.
fn appt(id: &str, category: Category, priority: u8) -> Postponed {
    Postponed {
        id: id.into(),
        patient: format!("pat-{id}"),
        category,
        priority,
        duration_minutes: 30,
        original_start_ms: at("2026-10-01", 10, 0),
        cancelled_on_the_day: false,
        rtt_referral: None,
        decision_to_treat: None,
        regimen_window: None,
        practitioners: vec![],
        locations: vec![],
        busy: vec![],
        notice_waived: false,
    }
}

fn slot(id: &str, category: Category, date: &str, hh: u32, mm: u32, minutes: i64) -> FreeSlot {
    let start_ms = at(date, hh, mm);
    FreeSlot {
        id: id.into(),
        schedule: "sched".into(),
        category,
        start_ms,
        end_ms: start_ms + minutes * 60_000,
        practitioner: None,
        location: None,
    }
}

use Category::*;

/// Solves both ways, checks every hard rule, and returns the heuristic's solution.
fn run(inst: &Instance) -> Solution {
    let h = solve(inst);
    assert_eq!(violations(inst, &h), Vec::<String>::new(), "heuristic");
    let e = solve_exact(inst, &ExactOptions::default()).expect("exact model");
    assert_eq!(violations(inst, &e.solution), Vec::<String>::new(), "exact");
    assert!(e.proven_optimal);
    assert_eq!(
        h.objective, e.solution.objective,
        "heuristic should be optimal on hand-made cases"
    );
    h
}

fn slot_of<'a>(sol: &'a Solution, id: &str) -> Option<&'a str> {
    sol.assignments
        .iter()
        .find(|x| x.appointment == id)
        .map(|x| x.slot.as_str())
}

fn reason_of(sol: &Solution, id: &str) -> Option<Reason> {
    sol.unplaced.iter().find(|u| u.appointment == id).map(|u| u.reason)
}

fn inst(appointments: Vec<Postponed>, slots: Vec<FreeSlot>) -> Instance {
    Instance {
        params: params(),
        appointments,
        slots,
    }
}

#[test]
fn earliest_slot_after_the_minimum_lead() {
    let i = inst(
        vec![appt("a", Outpatient, 4)],
        vec![
            slot("before-lead", Outpatient, "2026-10-06", 7, 59, 30),
            slot("first", Outpatient, "2026-10-06", 9, 0, 30),
            slot("later", Outpatient, "2026-10-07", 9, 0, 30),
        ],
    );
    let sol = run(&i);
    let x = &sol.assignments[0];
    assert_eq!(x.slot, "first");
    assert_eq!(
        (x.start_ms, x.end_ms),
        (at("2026-10-06", 9, 0), at("2026-10-06", 9, 30))
    );
    assert_eq!(x.lateness_days, 5);
    assert!(x.short_notice);
    assert_eq!(sol.objective.cost, 5 + 10);
}

#[test]
fn priority_one_gets_the_only_slot() {
    let i = inst(
        vec![appt("routine", Outpatient, 4), appt("urgent", Outpatient, 1)],
        vec![slot("s", Outpatient, "2026-10-08", 9, 0, 30)],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "urgent"), Some("s"));
    assert_eq!(reason_of(&sol, "routine"), Some(Reason::AllTaken));
    assert_eq!(sol.objective.placed, [1, 0, 0, 0]);
    assert_eq!(sol.objective.unplaced, [0, 0, 0, 1]);
}

#[test]
fn an_urgent_patient_moves_over_to_make_room() {
    // The long slot comes first; the urgent 30-minute patient would take it, but only
    // it can host the 60-minute one.
    let mut long = appt("long", DayCase, 4);
    long.duration_minutes = 60;
    let i = inst(
        vec![appt("urgent", DayCase, 1), long],
        vec![
            slot("s60", DayCase, "2026-10-07", 9, 0, 60),
            slot("s30", DayCase, "2026-10-08", 9, 0, 30),
        ],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "long"), Some("s60"));
    assert_eq!(slot_of(&sol, "urgent"), Some("s30"));
}

#[test]
fn lower_priority_lateness_is_traded_for_higher_priority() {
    // Two slots, two patients: priority 1 gets the earlier one.
    let i = inst(
        vec![appt("p4", Outpatient, 4), appt("p1", Outpatient, 1)],
        vec![
            slot("early", Outpatient, "2026-10-07", 9, 0, 30),
            slot("late", Outpatient, "2026-11-02", 9, 0, 30),
        ],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "p1"), Some("early"));
    assert_eq!(slot_of(&sol, "p4"), Some("late"));
}

#[test]
fn hard_deadlines() {
    let slots = || {
        vec![
            slot("oct-21", DayCase, "2026-10-21", 9, 0, 60),
            slot("oct-29", DayCase, "2026-10-29", 16, 0, 60),
            slot("oct-30", DayCase, "2026-10-30", 9, 0, 60),
        ]
    };
    // 28-day rule: cancelled on the day (1 October) -> by 29 October.
    let mut op = appt("op", DayCase, 4);
    op.cancelled_on_the_day = true;
    let mut i = inst(vec![op.clone()], slots());
    i.slots.remove(0);
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "op"), Some("oct-29"));
    assert_eq!(sol.assignments[0].deadline, Some(d("2026-10-29")));
    // Only a slot after the deadline: unplaced.
    i.slots.remove(0);
    let sol = run(&i);
    assert_eq!(reason_of(&sol, "op"), Some(Reason::NoSlotInWindow));
    assert!(
        sol.unplaced[0].detail.contains("2026-10-29"),
        "{}",
        sol.unplaced[0].detail
    );

    // Cancer 31 days: decision to treat 20 September -> by 21 October.
    let mut cancer = appt("cancer", DayCase, 2);
    cancer.decision_to_treat = Some(d("2026-09-20"));
    let mut i = inst(vec![cancer], slots());
    i.slots[0].start_ms = at("2026-10-21", 23, 0);
    i.slots[0].end_ms = i.slots[0].start_ms + 3_600_000;
    let sol = run(&i);
    assert_eq!(
        slot_of(&sol, "cancer"),
        Some("oct-21"),
        "23:00 local on the deadline day is in time"
    );

    // RTT: referral 17 June -> 21 October.
    let mut rtt = appt("rtt", DayCase, 3);
    rtt.rtt_referral = Some(d("2026-06-17"));
    let mut i = inst(vec![rtt], slots());
    i.slots.remove(0);
    let sol = run(&i);
    assert_eq!(reason_of(&sol, "rtt"), Some(Reason::NoSlotInWindow));
}

#[test]
fn regimen_window_bounds_both_ends() {
    let mut chemo = appt("chemo", Chemotherapy, 1);
    chemo.regimen_window = Some(DateWindow {
        earliest: d("2026-10-12"),
        latest: d("2026-10-16"),
    });
    let i = inst(
        vec![chemo.clone()],
        vec![
            slot("too-early", Chemotherapy, "2026-10-09", 9, 0, 120),
            slot("in", Chemotherapy, "2026-10-14", 9, 0, 120),
            slot("too-late", Chemotherapy, "2026-10-19", 9, 0, 120),
        ],
    );
    assert_eq!(slot_of(&run(&i), "chemo"), Some("in"));
    let mut i = i;
    i.slots.remove(1);
    assert_eq!(reason_of(&run(&i), "chemo"), Some(Reason::NoSlotInWindow));
    // A window that closed before the earliest rebooking: always left for staff.
    let mut closed = chemo;
    closed.regimen_window = Some(DateWindow {
        earliest: d("2026-09-28"),
        latest: d("2026-10-05"),
    });
    let i = inst(vec![closed], vec![slot("s", Chemotherapy, "2026-10-06", 9, 0, 120)]);
    assert_eq!(reason_of(&run(&i), "chemo"), Some(Reason::WindowClosed));
}

#[test]
fn breached_deadline_policy() {
    let mut late = appt("late", Outpatient, 2);
    late.rtt_referral = Some(d("2026-05-01")); // 18 weeks ended 4 September
    let mut i = inst(
        vec![late],
        vec![
            slot("first", Outpatient, "2026-10-06", 9, 0, 30),
            slot("second", Outpatient, "2026-10-07", 9, 0, 30),
        ],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "late"), Some("first"));
    assert_eq!(sol.assignments[0].breached, vec![DeadlineKind::Rtt]);
    assert_eq!(sol.assignments[0].deadline, None);
    i.params.rules.book_breached = false;
    assert_eq!(reason_of(&run(&i), "late"), Some(Reason::WindowClosed));
}

#[test]
fn service_length_practitioner_and_location() {
    let mut long = appt("long", Outpatient, 3);
    long.duration_minutes = 45;
    let mut dr = appt("dr", Outpatient, 3);
    dr.practitioners = vec!["dr-who".into()];
    let mut site = appt("site", Outpatient, 3);
    site.locations = vec!["site-b".into()];
    let chemo = appt("chemo", Chemotherapy, 1);
    let mut s1 = slot("s1", Outpatient, "2026-10-07", 9, 0, 30);
    s1.practitioner = Some("dr-no".into());
    s1.location = Some("site-a".into());
    let i = inst(vec![long, dr.clone(), site.clone(), chemo], vec![s1.clone()]);
    let sol = run(&i);
    assert_eq!(reason_of(&sol, "long"), Some(Reason::NoSuitableSlot));
    assert_eq!(reason_of(&sol, "dr"), Some(Reason::NoSuitableSlot));
    assert_eq!(reason_of(&sol, "site"), Some(Reason::NoSuitableSlot));
    assert_eq!(reason_of(&sol, "chemo"), Some(Reason::NoSlotOfService));
    // The right practitioner at the right site.
    let mut s2 = s1.clone();
    s2.id = "s2".into();
    s2.practitioner = Some("dr-who".into());
    s2.location = Some("site-b".into());
    s2.start_ms += 86_400_000;
    s2.end_ms += 86_400_000;
    let i = inst(vec![dr, site], vec![s1, s2]);
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "dr"), Some("s2"));
    assert_eq!(slot_of(&sol, "site"), None, "s2 went to dr; s1 is at the wrong site");
}

#[test]
fn clashes_with_other_appointments() {
    let mut a = appt("a", Outpatient, 2);
    a.busy = vec![Interval::new(at("2026-10-07", 8, 30), at("2026-10-07", 9, 0))];
    let mut i = inst(vec![a], vec![slot("s", Outpatient, "2026-10-07", 9, 0, 30)]);
    // Back to back is fine...
    assert_eq!(slot_of(&run(&i), "a"), Some("s"));
    // ...but not with a 15-minute buffer.
    i.params.clash_buffer_minutes = 15;
    assert_eq!(reason_of(&run(&i), "a"), Some(Reason::Clashes));
    // Overlap.
    i.params.clash_buffer_minutes = 0;
    i.appointments[0].busy[0].end_ms = at("2026-10-07", 9, 1);
    assert_eq!(reason_of(&run(&i), "a"), Some(Reason::Clashes));
}

#[test]
fn one_patient_is_not_booked_twice_at_once() {
    let mut x = appt("x", Outpatient, 1);
    let mut y = appt("y", DayCase, 1);
    x.patient = "same".into();
    y.patient = "same".into();
    let i = inst(
        vec![x, y],
        vec![
            slot("op", Outpatient, "2026-10-07", 9, 0, 30),
            slot("dc", DayCase, "2026-10-07", 9, 0, 60),
            slot("dc-later", DayCase, "2026-10-08", 9, 0, 60),
        ],
    );
    let sol = run(&i);
    assert_eq!(sol.objective.placed, [2, 0, 0, 0]);
    let (sx, sy) = (slot_of(&sol, "x").unwrap(), slot_of(&sol, "y").unwrap());
    assert!(!(sx == "op" && sy == "dc"), "overlapping rebookings for one patient");
}

#[test]
fn reasonable_notice_is_soft() {
    // (slots, rules, waived, expected slot). England: notice from 26 October.
    type Case = (&'static [(&'static str, &'static str)], Rules, bool, &'static str);
    let cases: &[Case] = &[
        // Short notice (6 days late + 10) beats 25 days late.
        (
            &[("oct-07", "2026-10-07"), ("oct-26", "2026-10-26")],
            Rules::england(),
            false,
            "oct-07",
        ),
        // 19 days late + 10 loses to 25 days late with notice.
        (
            &[("oct-20", "2026-10-20"), ("oct-26", "2026-10-26")],
            Rules::england(),
            false,
            "oct-26",
        ),
        // Waived: the earlier one.
        (
            &[("oct-20", "2026-10-20"), ("oct-26", "2026-10-26")],
            Rules::england(),
            true,
            "oct-20",
        ),
        // Scotland, 10 days: 20 October is reasonable notice.
        (
            &[("oct-20", "2026-10-20"), ("oct-26", "2026-10-26")],
            Rules::scotland(),
            false,
            "oct-20",
        ),
    ];
    for (slots, rules, waived, want) in cases {
        let mut a = appt("a", Outpatient, 4);
        a.notice_waived = *waived;
        let mut i = inst(
            vec![a],
            slots
                .iter()
                .map(|(id, date)| slot(id, Outpatient, date, 9, 0, 30))
                .collect(),
        );
        i.params.rules = rules.clone();
        assert_eq!(
            slot_of(&run(&i), "a"),
            Some(*want),
            "{slots:?} waived {waived} notice {}",
            rules.notice_days
        );
    }
    // A priority-1 patient (weight 8) takes the short-notice slot: 8 x 19 + 10 = 162
    // is less than 8 x 25 = 200.
    let i = inst(
        vec![appt("a", Outpatient, 1)],
        vec![
            slot("oct-20", Outpatient, "2026-10-20", 9, 0, 30),
            slot("oct-26", Outpatient, "2026-10-26", 9, 0, 30),
        ],
    );
    assert_eq!(slot_of(&run(&i), "a"), Some("oct-20"));
}

#[test]
fn same_priority_prefers_the_deadline_pathway() {
    let mut dl = appt("dl", Outpatient, 4);
    dl.rtt_referral = Some(d("2026-06-10")); // deadline 14 October
    let i = inst(
        vec![appt("open", Outpatient, 4), dl],
        vec![slot("s", Outpatient, "2026-10-08", 9, 0, 30)],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "dl"), Some("s"));
    assert_eq!(sol.objective.placed_with_deadline, [0, 0, 0, 1]);
}

#[test]
fn exchange_within_a_class_when_cheaper() {
    // The inpatient case found by the gap measurement: the urgent operation should take
    // the early slot and the long routine one the late 240-minute slot, leaving the
    // short routine one unplaced, rather than the other way round.
    let mut urgent = appt("urgent", InpatientProcedure, 1);
    urgent.duration_minutes = 120;
    urgent.rtt_referral = Some(d("2026-07-01"));
    let mut short = appt("short", InpatientProcedure, 4);
    short.duration_minutes = 180;
    short.rtt_referral = Some(d("2026-06-13")); // deadline 17 October
    let mut long = appt("long", InpatientProcedure, 4);
    long.duration_minutes = 240;
    long.rtt_referral = Some(d("2026-06-26")); // deadline 30 October
    let i = inst(
        vec![urgent, short, long],
        vec![
            slot("s180", InpatientProcedure, "2026-10-16", 9, 0, 180),
            slot("s240", InpatientProcedure, "2026-10-29", 9, 0, 240),
        ],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "urgent"), Some("s180"));
    assert_eq!(slot_of(&sol, "long"), Some("s240"));
    assert_eq!(reason_of(&sol, "short"), Some(Reason::AllTaken));
}

#[test]
fn invalid_input_is_listed_not_fatal() {
    let mut zero = appt("zero", Outpatient, 0);
    zero.patient = "p0".into();
    let five = appt("five", Outpatient, 5);
    let mut nodur = appt("nodur", Outpatient, 2);
    nodur.duration_minutes = 0;
    let ok = appt("ok", Outpatient, 2);
    let dup = appt("ok", Outpatient, 1);
    let mut bad_slot = slot("bad", Outpatient, "2026-10-07", 9, 0, 30);
    bad_slot.end_ms = bad_slot.start_ms;
    let i = inst(
        vec![zero, five, nodur, ok, dup],
        vec![
            bad_slot,
            slot("s", Outpatient, "2026-10-08", 9, 0, 30),
            slot("s", Outpatient, "2026-10-09", 9, 0, 30),
        ],
    );
    let sol = run(&i);
    assert_eq!(slot_of(&sol, "ok"), Some("s"));
    assert_eq!(
        sol.assignments[0].start_ms,
        at("2026-10-08", 9, 0),
        "the first slot with a duplicate id counts"
    );
    let invalid: Vec<_> = sol
        .unplaced
        .iter()
        .filter(|u| u.reason == Reason::InvalidInput)
        .collect();
    assert_eq!(invalid.len(), 4, "{invalid:?}");
}

#[test]
fn shortfall_per_service_and_week() {
    // Three chemotherapy patients in one regimen window, one chair slot.
    let mut appointments = Vec::new();
    for k in 0..3 {
        let mut c = appt(&format!("c{k}"), Chemotherapy, 1);
        c.duration_minutes = 180;
        c.regimen_window = Some(DateWindow {
            earliest: d("2026-10-12"),
            latest: d("2026-10-16"),
        });
        appointments.push(c);
    }
    // An outpatient placed well after its target (6 October + 28 days = 3 November).
    appointments.push(appt("op", Outpatient, 4));
    let i = inst(
        appointments,
        vec![
            slot("chair", Chemotherapy, "2026-10-13", 9, 0, 240),
            slot("op", Outpatient, "2026-11-10", 9, 0, 30),
        ],
    );
    let sol = run(&i);
    assert_eq!(sol.objective.placed, [1, 0, 0, 1]);
    let lines: Vec<String> = sol.shortfall.iter().map(|s| s.describe()).collect();
    assert_eq!(
        lines,
        vec![
            "chemotherapy, week of 2026-10-12: 6 more chair-hours needed (2 appointments)",
            "outpatient, week of 2026-11-02: 1 more clinic-hour needed (1 appointment)",
        ]
    );
}

#[test]
fn solution_serialises() {
    let i = inst(
        vec![appt("a", DayCase, 2)],
        vec![slot("s", DayCase, "2026-10-07", 9, 0, 60)],
    );
    let sol = run(&i);
    let json = serde_json::to_value(&sol).unwrap();
    assert_eq!(json["assignments"][0]["appointment"], "a");
    assert_eq!(json["objective"]["placed"][1], 1);
    let inst_json = serde_json::to_string(&i).unwrap();
    assert!(inst_json.contains("\"category\":\"day-case\""));
    let back: Instance = serde_json::from_str(&inst_json).unwrap();
    assert_eq!(back, i);
}
