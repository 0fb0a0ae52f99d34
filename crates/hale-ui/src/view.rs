//! Turning FHIR JSON into what a person reads: names as `FAMILY, Given
//! (Title)`, NHS numbers as 3-3-4, dates as `14-Jul-1945`, ages. Pure
//! functions, tested with `check(input, expect)` tables.

use chrono::{Datelike, NaiveDate};
use hale_fhir::codes::NHS_NUMBER_SYSTEM;
use serde_json::Value;

/// `9434765919` -> `943 476 5919`; anything else unchanged.
pub fn nhs_334(n: &str) -> String {
    let d: String = n.chars().filter(|c| !c.is_whitespace()).collect();
    if d.len() == 10 && d.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &d[..3], &d[3..6], &d[6..])
    } else {
        n.to_string()
    }
}

/// The 10 digits of `s` when it is an NHS number with a valid check digit
/// (spaces and dashes allowed between digits).
pub fn parse_nhs_number(s: &str) -> Option<String> {
    let d: String = s.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    (d.len() == 10 && d.bytes().all(|b| b.is_ascii_digit()) && hale_fhir::nhs::is_valid(&d)).then_some(d)
}

pub fn nhs_number(patient: &Value) -> Option<String> {
    patient["identifier"].as_array()?.iter().find_map(|i| {
        (i["system"] == NHS_NUMBER_SYSTEM)
            .then(|| i["value"].as_str().map(str::to_string))
            .flatten()
    })
}

/// `FAMILY, Given Middle (Title)` from the official (or first) name.
pub fn banner_name(patient: &Value) -> String {
    let names = patient["name"].as_array().cloned().unwrap_or_default();
    let n = names
        .iter()
        .find(|n| n["use"] == "official")
        .or_else(|| names.first())
        .cloned()
        .unwrap_or(Value::Null);
    let family = n["family"].as_str().unwrap_or("").to_uppercase();
    let given: Vec<&str> = n["given"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = if family.is_empty() {
        "Name not known".to_string()
    } else {
        family
    };
    if !given.is_empty() {
        out.push_str(", ");
        out.push_str(&given.join(" "));
    }
    if let Some(t) = n["prefix"][0].as_str() {
        out.push_str(&format!(" ({t})"));
    }
    out
}

/// `1945-07-14` -> `14-Jul-1945`; a dateTime keeps only its date.
pub fn date(s: &str) -> String {
    let day = s.get(..10).unwrap_or(s);
    match NaiveDate::parse_from_str(day, "%Y-%m-%d") {
        Ok(d) => d.format("%d-%b-%Y").to_string(),
        Err(_) => s.to_string(),
    }
}

/// `2026-12-02T09:20:00Z` -> `02-Dec-2026 09:20` (UTC, as stored).
pub fn date_time(s: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.format("%d-%b-%Y %H:%M").to_string(),
        Err(_) => date(s),
    }
}

/// `09:20` of an instant.
pub fn time_of(s: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.format("%H:%M").to_string(),
        Err(_) => s.to_string(),
    }
}

/// Age in whole years on `today`, as the CUI banner shows it: `61y`; under
/// two years in months, under a month in days.
pub fn age(birth: &str, today: NaiveDate) -> Option<String> {
    let b = NaiveDate::parse_from_str(birth.get(..10)?, "%Y-%m-%d").ok()?;
    if b > today {
        return None;
    }
    let mut years = today.year() - b.year();
    if (today.month(), today.day()) < (b.month(), b.day()) {
        years -= 1;
    }
    if years >= 2 {
        return Some(format!("{years}y"));
    }
    let mut months = (today.year() - b.year()) * 12 + today.month() as i32 - b.month() as i32;
    if today.day() < b.day() {
        months -= 1;
    }
    if months >= 1 {
        return Some(format!("{months}m"));
    }
    Some(format!("{}d", (today - b).num_days()))
}

pub fn gender(patient: &Value) -> String {
    match patient["gender"].as_str() {
        Some("male") => "Male",
        Some("female") => "Female",
        Some("other") => "Other",
        _ => "Not known",
    }
    .to_string()
}

/// One line of the first address: `1 High St, Town, G1 1AA`.
pub fn address(patient: &Value) -> String {
    let a = &patient["address"][0];
    let mut parts: Vec<String> = a["line"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    for k in ["city", "postalCode"] {
        if let Some(v) = a[k].as_str() {
            parts.push(v.to_string());
        }
    }
    if parts.is_empty() {
        "Not known".into()
    } else {
        parts.join(", ")
    }
}

pub fn phone(patient: &Value) -> Option<String> {
    patient["telecom"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == "phone")
        .and_then(|t| t["value"].as_str())
        .map(str::to_string)
}

/// A CodeableConcept's text, else its first coding's display, else its code.
pub fn concept(c: &Value) -> String {
    if let Some(t) = c["text"].as_str() {
        return t.to_string();
    }
    let first = &c["coding"][0];
    first["display"]
        .as_str()
        .or_else(|| first["code"].as_str())
        .unwrap_or("Not recorded")
        .to_string()
}

/// `12.5 mmol/L` of a Quantity.
pub fn quantity(q: &Value) -> String {
    let v = match &q["value"] {
        Value::Number(n) => n.to_string(),
        _ => return String::new(),
    };
    match q["unit"].as_str().or_else(|| q["code"].as_str()) {
        Some(u) => format!("{v} {u}"),
        None => v,
    }
}

/// `3.5 – 5.0 mmol/L` of an Observation's first reference range.
pub fn reference_range(obs: &Value) -> String {
    let r = &obs["referenceRange"][0];
    let lo = quantity(&r["low"]);
    let hi = quantity(&r["high"]);
    match (lo.is_empty(), hi.is_empty()) {
        (false, false) => format!("{} – {}", r["low"]["value"], hi),
        (false, true) => format!("≥ {lo}"),
        (true, false) => format!("≤ {hi}"),
        (true, true) => r["text"].as_str().unwrap_or("").to_string(),
    }
}

/// Reference to id: `Patient/pat-1` -> `pat-1` when of `rtype`.
pub fn ref_id<'a>(reference: &'a Value, rtype: &str) -> Option<&'a str> {
    reference["reference"].as_str()?.strip_prefix(rtype)?.strip_prefix('/')
}

/// A tentative version saved in this site's journal (`meta.versionId` `p<n>`).
pub fn is_pending(resource: &Value) -> bool {
    resource["meta"]["versionId"]
        .as_str()
        .is_some_and(|v| v.starts_with('p'))
}

/// Decode base64 (standard alphabet, padding optional) as UTF-8 text.
pub fn base64_text(s: &str) -> Option<String> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = T.iter().position(|t| *t == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check<T: std::fmt::Debug + PartialEq>(got: T, expect: T) {
        assert_eq!(got, expect);
    }

    #[test]
    fn nhs_numbers() {
        check(nhs_334("9434765919"), "943 476 5919".to_string());
        check(nhs_334("943 476 5919"), "943 476 5919".to_string());
        check(nhs_334("12345"), "12345".to_string());
        check(parse_nhs_number("943 476 5919"), Some("9434765919".into()));
        check(parse_nhs_number("943-476-5919"), Some("9434765919".into()));
        check(parse_nhs_number("9434765918"), None); // wrong check digit
        check(parse_nhs_number("smith"), None);
    }

    #[test]
    fn banner_fields() {
        let p = json!({"name": [{"use": "usual", "family": "x"}, {"use": "official", "family": "Smith", "given": ["Jane", "Ann"], "prefix": ["Mrs"]}], "gender": "female",
            "address": [{"line": ["1 High St"], "city": "Paisley", "postalCode": "PA1 1AA"}]});
        check(banner_name(&p), "SMITH, Jane Ann (Mrs)".to_string());
        check(banner_name(&json!({})), "Name not known".to_string());
        check(gender(&p), "Female".to_string());
        check(gender(&json!({"gender": "unknown"})), "Not known".to_string());
        check(address(&p), "1 High St, Paisley, PA1 1AA".to_string());
        check(address(&json!({})), "Not known".to_string());
    }

    #[test]
    fn dates_and_ages() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        check(date("1945-07-14"), "14-Jul-1945".to_string());
        check(date_time("2026-12-02T09:20:00Z"), "02-Dec-2026 09:20".to_string());
        check(age("1945-07-14", today), Some("81y".into()));
        check(age("1945-12-03", today), Some("80y".into()));
        check(age("2025-06-10", today), Some("17m".into()));
        check(age("2026-11-20", today), Some("12d".into()));
        check(age("2027-01-01", today), None);
    }

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "Seen in clinic. BP 120/80 — fine."] {
            check(base64_text(&base64(s.as_bytes())), Some(s.to_string()));
        }
    }
}
