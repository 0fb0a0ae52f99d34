//! UK civil time (Europe/London) without a tz database.
//!
//! Since 1996 the UK follows the EU rule: British Summer Time (UTC+1) runs from
//! 01:00 UTC on the last Sunday of March to 01:00 UTC on the last Sunday of
//! October; the rest of the year is GMT (UTC+0). That one rule is all Hale needs
//! for NHS day arithmetic and letter timing, so it is written out here instead
//! of pulling in a full tz database.
//!
//! Instants are `i64` milliseconds since the Unix epoch (UTC), as elsewhere in Hale.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Weekday};

/// Milliseconds in a minute / hour / day.
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The last Sunday of `month` in `year`.
pub fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let first_of_next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .expect("valid month");
    let last = first_of_next - Duration::days(1);
    let back = last.weekday().num_days_from_sunday() as i64;
    last - Duration::days(back)
}

fn utc_ms(date: NaiveDate, hour: u32) -> i64 {
    date.and_hms_opt(hour, 0, 0)
        .expect("valid hour")
        .and_utc()
        .timestamp_millis()
}

/// The UTC instants (ms) at which BST starts and ends in `year`.
pub fn bst_bounds(year: i32) -> (i64, i64) {
    (utc_ms(last_sunday(year, 3), 1), utc_ms(last_sunday(year, 10), 1))
}

/// Offset of UK civil time from UTC at the instant `t_ms`, in milliseconds (0 or one hour).
pub fn uk_offset_ms(t_ms: i64) -> i64 {
    let year = match DateTime::from_timestamp_millis(t_ms) {
        Some(dt) => dt.year(),
        None => return 0,
    };
    let (start, end) = bst_bounds(year);
    if t_ms >= start && t_ms < end {
        HOUR_MS
    } else {
        0
    }
}

/// UK local wall-clock time at instant `t_ms`.
pub fn to_uk_local(t_ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(t_ms + uk_offset_ms(t_ms))
        .map(|d| d.naive_utc())
        .unwrap_or_default()
}

/// UK local calendar date at instant `t_ms`.
pub fn uk_date(t_ms: i64) -> NaiveDate {
    to_uk_local(t_ms).date()
}

/// The instant of a UK local wall-clock time. Ambiguous times (the repeated hour
/// in October) resolve to the first occurrence (BST); times that do not exist
/// (the skipped hour in March) resolve as if still GMT, i.e. one hour later on
/// the clock.
pub fn from_uk_local(local: NaiveDateTime) -> i64 {
    let naive_ms = local.and_utc().timestamp_millis();
    let as_bst = naive_ms - HOUR_MS;
    if uk_offset_ms(as_bst) == HOUR_MS {
        return as_bst;
    }
    // GMT, or the spring gap (which then reads as GMT).
    naive_ms
}

/// The instant at which UK local `date` starts (00:00 local; midnight always exists in the UK).
pub fn uk_midnight(date: NaiveDate) -> i64 {
    from_uk_local(date.and_time(NaiveTime::MIN))
}

/// The instant of `hh:mm` UK local time on `date`.
pub fn uk_at(date: NaiveDate, hour: u32, minute: u32) -> i64 {
    from_uk_local(date.and_hms_opt(hour, minute, 0).expect("valid time"))
}

/// Monday of the ISO week containing `date`.
pub fn iso_week_monday(date: NaiveDate) -> NaiveDate {
    date - Duration::days(date.weekday().num_days_from_monday() as i64)
}

/// Whether `date` falls on Saturday or Sunday.
pub fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

/// Days from `a` to `b` (`b - a`).
pub fn days_between(a: NaiveDate, b: NaiveDate) -> i64 {
    (b - a).num_days()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }
    fn dt(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }
    fn utc(s: &str) -> i64 {
        dt(s).and_utc().timestamp_millis()
    }

    #[test]
    fn last_sundays() {
        for (y, m, want) in [
            (2025, 3, "2025-03-30"),
            (2025, 10, "2025-10-26"),
            (2026, 3, "2026-03-29"),
            (2026, 10, "2026-10-25"),
            (2027, 3, "2027-03-28"),
            (2027, 10, "2027-10-31"),
            (2024, 12, "2024-12-29"),
        ] {
            assert_eq!(last_sunday(y, m), d(want), "{y}-{m}");
        }
    }

    #[test]
    fn utc_to_local() {
        // (UTC instant, expected UK local wall clock)
        for (u, local) in [
            ("2026-01-15 12:00", "2026-01-15 12:00"), // winter: GMT
            ("2026-07-15 12:00", "2026-07-15 13:00"), // summer: BST
            ("2026-03-29 00:59", "2026-03-29 00:59"), // just before the spring change
            ("2026-03-29 01:00", "2026-03-29 02:00"), // clocks go forward
            ("2026-10-25 00:59", "2026-10-25 01:59"), // last BST minute
            ("2026-10-25 01:00", "2026-10-25 01:00"), // clocks go back
            ("2026-06-30 23:30", "2026-07-01 00:30"), // local date is the next day
            ("2026-12-31 23:30", "2026-12-31 23:30"),
        ] {
            assert_eq!(to_uk_local(utc(u)), dt(local), "{u}");
        }
    }

    #[test]
    fn local_to_utc() {
        for (local, u) in [
            ("2026-01-15 09:00", "2026-01-15 09:00"),
            ("2026-07-15 09:00", "2026-07-15 08:00"),
            ("2026-03-29 01:30", "2026-03-29 01:30"), // before the gap: GMT
            ("2026-03-29 02:30", "2026-03-29 01:30"), // skipped hour, read as GMT
            ("2026-03-29 03:00", "2026-03-29 02:00"),
            ("2026-10-25 01:30", "2026-10-25 00:30"), // ambiguous: first (BST) occurrence
            ("2026-10-25 02:00", "2026-10-25 02:00"),
        ] {
            assert_eq!(from_uk_local(dt(local)), utc(u), "{local}");
        }
    }

    #[test]
    fn round_trip_every_quarter_hour_of_a_year() {
        let mut t = utc("2026-01-01 00:00");
        let end = utc("2027-01-01 00:00");
        while t < end {
            let local = to_uk_local(t);
            // Only the repeated October hour is ambiguous; everything else round-trips.
            let back = from_uk_local(local);
            if back != t {
                assert_eq!(back, t - HOUR_MS, "only the repeated hour may differ: {local}");
                assert_eq!(local.date(), d("2026-10-25"));
            }
            t += 15 * MINUTE_MS;
        }
    }

    #[test]
    fn weeks() {
        assert_eq!(iso_week_monday(d("2026-10-14")), d("2026-10-12"));
        assert_eq!(iso_week_monday(d("2026-10-12")), d("2026-10-12"));
        assert_eq!(iso_week_monday(d("2026-10-18")), d("2026-10-12"));
        assert_eq!(iso_week_monday(d("2027-01-01")), d("2026-12-28"));
        assert_eq!(uk_midnight(d("2026-07-01")), utc("2026-06-30 23:00"));
        assert_eq!(uk_at(d("2026-12-01"), 17, 30), utc("2026-12-01 17:30"));
    }
}
