//! Civil time for printed packs. The library never reads the clock: every
//! instant comes from the caller (`now_ms`) or from the data.
//!
//! UK civil time is computed by rule rather than from a time-zone database:
//! British Summer Time runs from 01:00 UTC on the last Sunday of March to
//! 01:00 UTC on the last Sunday of October (the rule since 1998).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Weekday};

const MS_PER_HOUR: i64 = 3_600_000;

/// The time zone dates and times are printed in, and whose calendar days the
/// pack covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// UTC all year.
    Utc,
    /// UK civil time: GMT in winter, BST (UTC+1) in summer.
    #[default]
    EuropeLondon,
}

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    let mut d = NaiveDate::from_ymd_opt(ny, nm, 1).expect("valid month") - chrono::Duration::days(1);
    while d.weekday() != Weekday::Sun {
        d -= chrono::Duration::days(1);
    }
    d
}

fn utc_ms_of(d: NaiveDate, hour: u32) -> i64 {
    d.and_hms_opt(hour, 0, 0)
        .expect("valid hour")
        .and_utc()
        .timestamp_millis()
}

fn utc_date(utc_ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(utc_ms)
        .unwrap_or(DateTime::UNIX_EPOCH)
        .naive_utc()
}

impl Zone {
    /// Offset from UTC at the instant `utc_ms`, in ms.
    pub fn offset_ms(self, utc_ms: i64) -> i64 {
        match self {
            Zone::Utc => 0,
            Zone::EuropeLondon => {
                let year = utc_date(utc_ms).year();
                let start = utc_ms_of(last_sunday(year, 3), 1);
                let end = utc_ms_of(last_sunday(year, 10), 1);
                if (start..end).contains(&utc_ms) {
                    MS_PER_HOUR
                } else {
                    0
                }
            }
        }
    }

    /// The zone's abbreviation at `utc_ms`, printed after times.
    pub fn abbreviation(self, utc_ms: i64) -> &'static str {
        match self {
            Zone::Utc => "UTC",
            Zone::EuropeLondon if self.offset_ms(utc_ms) != 0 => "BST",
            Zone::EuropeLondon => "GMT",
        }
    }

    /// Short name for manifests and flags.
    pub fn name(self) -> &'static str {
        match self {
            Zone::Utc => "UTC",
            Zone::EuropeLondon => "Europe/London",
        }
    }

    /// Local wall-clock time of `utc_ms`.
    pub fn local(self, utc_ms: i64) -> NaiveDateTime {
        utc_date(utc_ms + self.offset_ms(utc_ms))
    }

    /// The UTC instant of local midnight at the start of `date`. Unambiguous
    /// in the UK: clocks change at 01:00 UTC, never across local midnight.
    pub fn midnight_utc_ms(self, date: NaiveDate) -> i64 {
        let naive = utc_ms_of(date, 0);
        let guess = naive - MS_PER_HOUR;
        if self.offset_ms(guess) == MS_PER_HOUR {
            guess
        } else {
            naive
        }
    }
}

/// "Tue 24 Nov 2026".
pub(crate) fn fmt_day(d: NaiveDate) -> String {
    d.format("%a %d %b %Y").to_string()
}

/// "09:00" local.
pub(crate) fn fmt_time(zone: Zone, utc_ms: i64) -> String {
    zone.local(utc_ms).format("%H:%M").to_string()
}

/// "Tue 24 Nov 2026 09:00 GMT".
pub(crate) fn fmt_day_time(zone: Zone, utc_ms: i64) -> String {
    format!(
        "{} {}",
        zone.local(utc_ms).format("%a %d %b %Y %H:%M"),
        zone.abbreviation(utc_ms)
    )
}

/// "24 Nov 2026" for a local instant (results, notes).
pub(crate) fn fmt_short_date(zone: Zone, utc_ms: i64) -> String {
    zone.local(utc_ms).format("%d %b %Y").to_string()
}

/// RFC 3339 UTC with milliseconds, as FHIR instants are written.
pub(crate) fn rfc3339_utc(utc_ms: i64) -> String {
    utc_date(utc_ms).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// "20261123T080000Z", sortable, for directory names.
pub(crate) fn compact_utc(utc_ms: i64) -> String {
    utc_date(utc_ms).format("%Y%m%dT%H%M%SZ").to_string()
}

/// `D:20261123080000Z` for the PDF information dictionary.
pub(crate) fn pdf_date(utc_ms: i64) -> String {
    utc_date(utc_ms).format("D:%Y%m%d%H%M%SZ").to_string()
}

/// Parse a FHIR date/dateTime/instant to the UTC ms at its start.
pub(crate) fn fhir_start_ms(text: &str) -> Option<i64> {
    hale_fhir::date::parse_range_ms(text).map(|(start, _)| start)
}

/// Parse a FHIR `date` (`YYYY-MM-DD`; partial dates give None).
pub(crate) fn fhir_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Age on `on`: "46y", or "8m" under two years.
pub(crate) fn age(birth: NaiveDate, on: NaiveDate) -> Option<String> {
    if on < birth {
        return None;
    }
    let mut months = (on.year() - birth.year()) * 12 + on.month() as i32 - birth.month() as i32;
    if on.day() < birth.day() {
        months -= 1;
    }
    Some(if months < 24 {
        format!("{months}m")
    } else {
        format!("{}y", months / 12)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        fhir_start_ms(s).expect("instant")
    }

    #[track_caller]
    fn check_local(zone: Zone, utc: &str, want_local: &str, want_abbrev: &str) {
        let t = ms(utc);
        assert_eq!(
            zone.local(t).format("%Y-%m-%d %H:%M").to_string(),
            want_local,
            "{zone:?} local of {utc}"
        );
        assert_eq!(zone.abbreviation(t), want_abbrev, "{zone:?} abbreviation at {utc}");
    }

    #[test]
    fn london_civil_time_cases() {
        let z = Zone::EuropeLondon;
        check_local(z, "2026-01-15T09:00:00Z", "2026-01-15 09:00", "GMT");
        check_local(z, "2026-07-01T09:00:00Z", "2026-07-01 10:00", "BST");
        // 2026: BST from Sun 29 March 01:00 UTC to Sun 25 October 01:00 UTC.
        check_local(z, "2026-03-29T00:59:59Z", "2026-03-29 00:59", "GMT");
        check_local(z, "2026-03-29T01:00:00Z", "2026-03-29 02:00", "BST");
        check_local(z, "2026-10-25T00:59:59Z", "2026-10-25 01:59", "BST");
        check_local(z, "2026-10-25T01:00:00Z", "2026-10-25 01:00", "GMT");
        check_local(z, "2026-11-23T23:30:00Z", "2026-11-23 23:30", "GMT");
        check_local(Zone::Utc, "2026-07-01T09:00:00Z", "2026-07-01 09:00", "UTC");
    }

    #[track_caller]
    fn check_midnight(zone: Zone, date: &str, want_utc: &str) {
        let d = fhir_date(date).expect("date");
        assert_eq!(
            rfc3339_utc(zone.midnight_utc_ms(d)),
            want_utc,
            "{zone:?} midnight of {date}"
        );
    }

    #[test]
    fn midnight_cases() {
        let z = Zone::EuropeLondon;
        check_midnight(z, "2026-11-24", "2026-11-24T00:00:00.000Z");
        check_midnight(z, "2026-07-01", "2026-06-30T23:00:00.000Z");
        // Change days: the change happens after local midnight both times.
        check_midnight(z, "2026-03-29", "2026-03-29T00:00:00.000Z");
        check_midnight(z, "2026-03-30", "2026-03-29T23:00:00.000Z");
        check_midnight(z, "2026-10-25", "2026-10-24T23:00:00.000Z");
        check_midnight(z, "2026-10-26", "2026-10-26T00:00:00.000Z");
        check_midnight(Zone::Utc, "2026-07-01", "2026-07-01T00:00:00.000Z");
    }

    #[track_caller]
    fn check_age(birth: &str, on: &str, want: Option<&str>) {
        let got = age(fhir_date(birth).unwrap(), fhir_date(on).unwrap());
        assert_eq!(got.as_deref(), want, "age({birth}, {on})");
    }

    #[test]
    fn age_cases() {
        check_age("1980-02-01", "2026-11-23", Some("46y"));
        check_age("1980-11-24", "2026-11-23", Some("45y"));
        check_age("1980-11-23", "2026-11-23", Some("46y"));
        check_age("2026-03-30", "2026-11-23", Some("7m"));
        check_age("2024-11-24", "2026-11-23", Some("23m"));
        check_age("2024-11-23", "2026-11-23", Some("2y"));
        check_age("2026-11-23", "2026-11-23", Some("0m"));
        check_age("2027-01-01", "2026-11-23", None);
    }

    #[test]
    fn formats() {
        let t = ms("2026-11-24T09:05:00Z");
        assert_eq!(fmt_day(fhir_date("2026-11-24").unwrap()), "Tue 24 Nov 2026");
        assert_eq!(fmt_time(Zone::EuropeLondon, t), "09:05");
        assert_eq!(fmt_day_time(Zone::EuropeLondon, t), "Tue 24 Nov 2026 09:05 GMT");
        assert_eq!(compact_utc(t), "20261124T090500Z");
        assert_eq!(pdf_date(t), "D:20261124090500Z");
        assert_eq!(rfc3339_utc(t), "2026-11-24T09:05:00.000Z");
    }
}
