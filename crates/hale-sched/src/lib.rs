//! Outage recovery scheduling for Hale.
//!
//! - [`rules`]: NHS hard deadlines (28-day cancelled operations, RTT 18 weeks,
//!   cancer 31 days, chemotherapy regimen windows) and soft reasonable notice.
//! - [`letters`]: GOV.UK Notify letter timing on UK working/delivery days and the
//!   choice of a channel that reaches the patient in time.
//! - [`solve`] (heuristic, large backlogs) and [`solve_exact`] (MILP, small ones)
//!   rebook postponed appointments into free slots with a lexicographic objective;
//!   [`violations`] checks any solution against every hard rule independently.
//! - [`generate_backlog`], [`bench`], [`measure_gap`]: synthetic backlogs and measurement.
//!
//! **Invariant:** pure. No IO, no clock (every "now" is a parameter; only
//! [`bench`] times itself), no randomness except the seeded generator, no SQLite,
//! no HTTP, no FHIR JSON. Instants are `i64` ms since the Unix epoch (UTC); day
//! rules use UK local dates ([`uktime`]). See DESIGN.md.

pub mod bench;
pub mod check;
pub mod exact;
pub mod gen;
pub mod heuristic;
pub mod letters;
pub mod model;
mod prep;
pub mod rules;
pub mod uktime;

pub use bench::{bench, gap_on, measure_gap, relative_gap, BenchReport, GapReport, GapSummary};
pub use check::violations;
pub use exact::{solve_exact, ExactError, ExactOptions, ExactSolution};
pub use gen::{generate, generate_backlog, GenOptions, Rng};
pub use heuristic::{solve, solve_with, HeuristicOptions};
pub use letters::{
    choose_channel, letter_timeline, Calendar, Channel, Contact, ContactPolicy, LetterTimeline, Postage,
};
pub use model::{
    Assignment, Category, DateWindow, FreeSlot, Instance, Interval, Objective, Params, Postponed, Priority, Reason,
    Shortfall, Solution, Unplaced, Weights,
};
pub use rules::{allowed, deadlines, hard_deadline, Allowed, Deadline, DeadlineKind, Rules};
