//! FHIR date, dateTime and instant values as inclusive UTC millisecond ranges.

use chrono::{DateTime, Datelike, NaiveDate};

const MS_PER_DAY: i64 = 86_400_000;
/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const EPOCH_DAYS_FROM_CE: i64 = 719_163;
/// 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the instants FHIR can write.
const INSTANT_MIN_MS: i64 = -62_135_596_800_000;
const INSTANT_MAX_MS: i64 = 253_402_300_799_999;

/// Parse a FHIR `date`, `dateTime` or `instant` into the inclusive range of
/// instants it denotes, in ms since the Unix epoch. A partial value covers its
/// whole period ("2024" is all of 2024). A value without a zone is taken as UTC.
/// Returns None when the text is not a valid FHIR date/dateTime/instant.
///
/// Accepted: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, and `YYYY-MM-DDThh:mm[:ss[.f+]]`
/// followed by an optional zone `Z` or `±hh:mm`. The minute-precision form (no
/// seconds) and the zone-less form are accepted for search values; the R4 schema
/// patterns (checked separately by validation) are stricter for stored data.
/// A fraction of fewer than three digits covers its whole precision (`.5` is
/// 500..=599 ms); digits past milliseconds are truncated. Calendar dates must
/// exist (no February 30th); year 0000 is not a FHIR year.
pub fn parse_range_ms(text: &str) -> Option<(i64, i64)> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    if year == 0 {
        return None;
    }
    let year = year as i32;
    if b.len() == 4 {
        let start = day_ms(year, 1, 1)?;
        return Some((start, day_ms(year + 1, 1, 1)? - 1));
    }
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)? as u32;
    if b.len() == 7 {
        let start = day_ms(year, month, 1)?;
        let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        return Some((start, day_ms(ny, nm, 1)? - 1));
    }
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)? as u32;
    let date_start = day_ms(year, month, day)?;
    if b.len() == 10 {
        return Some((date_start, date_start + MS_PER_DAY - 1));
    }
    expect(b, 10, b'T')?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut local = date_start + hour * 3_600_000 + minute * 60_000;
    let mut span_ms = 60_000;
    let mut pos = 16;
    if b.get(pos) == Some(&b':') {
        let second = digits(b, 17, 2)?;
        if second > 60 {
            return None;
        }
        local += second * 1000;
        span_ms = 1000;
        pos = 19;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let frac_start = pos;
            let mut ms = 0i64;
            while let Some(c) = b.get(pos).filter(|c| c.is_ascii_digit()) {
                if pos - frac_start < 3 {
                    ms = ms * 10 + i64::from(c - b'0');
                    span_ms /= 10;
                }
                pos += 1;
            }
            let n = pos - frac_start;
            if n == 0 {
                return None;
            }
            for _ in n..3 {
                ms *= 10;
            }
            local += ms;
        }
    }
    let offset_ms = match b.get(pos) {
        None => 0,
        Some(b'Z') if b.len() == pos + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == pos + 6 => {
            let oh = digits(b, pos + 1, 2)?;
            expect(b, pos + 3, b':')?;
            let om = digits(b, pos + 4, 2)?;
            if om > 59 || oh > 14 || (oh == 14 && om != 0) {
                return None;
            }
            let off = oh * 3_600_000 + om * 60_000;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let start = local - offset_ms;
    Some((start, start + span_ms - 1))
}

/// Format ms since the epoch as a FHIR `instant` (`2024-05-01T09:30:00.000Z`).
/// Values outside years 0001..=9999 are clamped to that range, since FHIR
/// cannot express them.
pub fn format_instant_ms(ms: i64) -> String {
    let ms = ms.clamp(INSTANT_MIN_MS, INSTANT_MAX_MS);
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => unreachable!("clamped instant {ms} is representable"),
    }
}

/// `n` ASCII digits at `at` as a number.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    s.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn expect(b: &[u8], at: usize, c: u8) -> Option<()> {
    (b.get(at) == Some(&c)).then_some(())
}

/// Midnight UTC at the start of a calendar day, in ms since the epoch.
fn day_ms(year: i32, month: u32, day: u32) -> Option<i64> {
    let d = NaiveDate::from_ymd_opt(year, month, day)?;
    Some((i64::from(d.num_days_from_ce()) - EPOCH_DAYS_FROM_CE) * MS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` is "start .. end" formatted as instants, or "none".
    fn check(input: &str, expect: &str) {
        let got = match parse_range_ms(input) {
            Some((s, e)) => format!("{} .. {}", format_instant_ms(s), format_instant_ms(e)),
            None => "none".to_string(),
        };
        assert_eq!(got, expect, "parse_range_ms({input:?})");
    }

    #[test]
    fn date_ranges() {
        check("2024", "2024-01-01T00:00:00.000Z .. 2024-12-31T23:59:59.999Z");
        check("2024-02", "2024-02-01T00:00:00.000Z .. 2024-02-29T23:59:59.999Z");
        check("2023-02", "2023-02-01T00:00:00.000Z .. 2023-02-28T23:59:59.999Z");
        check("2024-12", "2024-12-01T00:00:00.000Z .. 2024-12-31T23:59:59.999Z");
        check("2024-05-01", "2024-05-01T00:00:00.000Z .. 2024-05-01T23:59:59.999Z");
        check("2024-02-29", "2024-02-29T00:00:00.000Z .. 2024-02-29T23:59:59.999Z");
        check("1900-01-01", "1900-01-01T00:00:00.000Z .. 1900-01-01T23:59:59.999Z");
        check("0001", "0001-01-01T00:00:00.000Z .. 0001-12-31T23:59:59.999Z");
        check("9999-12-31", "9999-12-31T00:00:00.000Z .. 9999-12-31T23:59:59.999Z");
        // dateTime and instant
        check(
            "2024-05-01T09:30:00Z",
            "2024-05-01T09:30:00.000Z .. 2024-05-01T09:30:00.999Z",
        );
        check(
            "2024-05-01T09:30:00.000Z",
            "2024-05-01T09:30:00.000Z .. 2024-05-01T09:30:00.000Z",
        );
        check(
            "2024-05-01T09:30:00.5Z",
            "2024-05-01T09:30:00.500Z .. 2024-05-01T09:30:00.599Z",
        );
        check(
            "2024-05-01T09:30:00.25Z",
            "2024-05-01T09:30:00.250Z .. 2024-05-01T09:30:00.259Z",
        );
        check(
            "2024-05-01T09:30:00.123456Z",
            "2024-05-01T09:30:00.123Z .. 2024-05-01T09:30:00.123Z",
        );
        check(
            "2024-05-01T10:30:00+01:00",
            "2024-05-01T09:30:00.000Z .. 2024-05-01T09:30:00.999Z",
        );
        check(
            "2024-05-01T00:30:00-05:30",
            "2024-05-01T06:00:00.000Z .. 2024-05-01T06:00:00.999Z",
        );
        check(
            "2024-05-01T00:30:00+14:00",
            "2024-04-30T10:30:00.000Z .. 2024-04-30T10:30:00.999Z",
        );
        check(
            "2024-12-31T23:59:60Z",
            "2025-01-01T00:00:00.000Z .. 2025-01-01T00:00:00.999Z",
        );
        // partial precision and no zone (search values)
        check(
            "2024-05-01T10:00",
            "2024-05-01T10:00:00.000Z .. 2024-05-01T10:00:59.999Z",
        );
        check(
            "2024-05-01T10:00Z",
            "2024-05-01T10:00:00.000Z .. 2024-05-01T10:00:59.999Z",
        );
        check(
            "2024-05-01T10:00:05",
            "2024-05-01T10:00:05.000Z .. 2024-05-01T10:00:05.999Z",
        );
        check(
            "1969-12-31T23:59:59.999Z",
            "1969-12-31T23:59:59.999Z .. 1969-12-31T23:59:59.999Z",
        );
        // invalid
        check("", "none");
        check("0000", "none");
        check("24", "none");
        check("20240", "none");
        check("2024-13", "none");
        check("2024-00", "none");
        check("2024-1", "none");
        check("2023-02-29", "none");
        check("2024-02-30", "none");
        check("2024-04-31", "none");
        check("2024-05-01T", "none");
        check("2024-05-01T10", "none");
        check("2024-05-01T24:00:00Z", "none");
        check("2024-05-01T10:60:00Z", "none");
        check("2024-05-01T10:00:61Z", "none");
        check("2024-05-01T10:00:00.Z", "none");
        check("2024-05-01T10:00:00+1:00", "none");
        check("2024-05-01T10:00:00+14:30", "none");
        check("2024-05-01T10:00:00+15:00", "none");
        check("2024-05-01T10:00:00+01:60", "none");
        check("2024-05-01T10:00:00+0100", "none");
        check("2024-05-01T10:00:00z", "none");
        check("2024-05-01t10:00:00Z", "none");
        check("2024-05-01T10:00:00ZZ", "none");
        check("2024-05-01Z", "none");
        check("2024-05-01 10:00:00", "none");
        check(" 2024", "none");
        check("2024-05-01T10:00:00Z ", "none");
        check("+2024", "none");
        check("２０２４", "none");
    }

    #[test]
    fn format_instants() {
        assert_eq!(format_instant_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_instant_ms(1_714_555_800_000), "2024-05-01T09:30:00.000Z");
        assert_eq!(format_instant_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_instant_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_instant_ms(i64::MIN), "0001-01-01T00:00:00.000Z");
        assert_eq!(
            parse_range_ms(&format_instant_ms(1_714_555_800_123)),
            Some((1_714_555_800_123, 1_714_555_800_123))
        );
    }
}
