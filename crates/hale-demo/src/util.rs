//! Small helpers: base64, NHS check digits, FHIR date/instant formatting and
//! JSON building blocks.

use chrono::{Datelike, Duration, NaiveDate};
use serde_json::Value;

/// A JSON object with exactly the given keys, in order. Unlike `json!`, the map
/// is allocated with exact capacity, which roughly halves the memory a large
/// board takes (serde_json's ordered maps otherwise grow by doubling).
macro_rules! obj {
    ($($k:literal : $v:expr),* $(,)?) => {{
        let mut m = ::serde_json::Map::with_capacity(0 $(+ { let _ = $k; 1 })*);
        $( m.insert(::std::string::String::from($k), $crate::util::ToJson::to_json($v)); )*
        ::serde_json::Value::Object(m)
    }};
}

/// A JSON array of the given values.
macro_rules! arr {
    ($($v:expr),* $(,)?) => {
        ::serde_json::Value::Array(vec![$($crate::util::ToJson::to_json($v)),*])
    };
}

pub(crate) use {arr, obj};

/// Conversion used by `obj!` / `arr!`; like `json!`, it accepts references
/// (and clones them).
pub(crate) trait ToJson {
    fn to_json(self) -> Value;
}

impl ToJson for Value {
    fn to_json(self) -> Value {
        self
    }
}
impl ToJson for &Value {
    fn to_json(self) -> Value {
        self.clone()
    }
}
impl ToJson for &str {
    fn to_json(self) -> Value {
        Value::String(self.to_string())
    }
}
impl ToJson for String {
    fn to_json(self) -> Value {
        Value::String(self)
    }
}
impl ToJson for &String {
    fn to_json(self) -> Value {
        Value::String(self.clone())
    }
}
impl ToJson for bool {
    fn to_json(self) -> Value {
        Value::Bool(self)
    }
}
impl ToJson for serde_json::Map<String, Value> {
    fn to_json(self) -> Value {
        Value::Object(self)
    }
}
impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(self) -> Value {
        Value::Array(self.into_iter().map(ToJson::to_json).collect())
    }
}
macro_rules! to_json_number {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(self) -> Value {
                Value::from(self)
            }
        }
    )*};
}
to_json_number!(i32, i64, u64, usize, f64);

/// Standard base64 (RFC 4648, with padding), as FHIR `base64Binary` wants.
pub(crate) fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// NHS number check digit for nine leading digits (see `hale_fhir::nhs`).
pub(crate) fn nhs_check_digit(first_nine: &[u8; 9]) -> Option<u8> {
    hale_fhir::nhs::check_digit(first_nine)
}

/// The NHS number (ten digits, no spaces) with the given nine-digit prefix, if valid.
pub(crate) fn nhs_number(prefix: u32) -> Option<String> {
    let mut digits = [0u8; 9];
    let mut p = prefix;
    for d in digits.iter_mut().rev() {
        *d = (p % 10) as u8;
        p /= 10;
    }
    nhs_check_digit(&digits).map(|c| format!("{prefix:09}{c}"))
}

/// `YYYY-MM-DD`.
pub(crate) fn fmt_date(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

/// Times are kept as whole minutes relative to `today` 00:00Z; this turns one
/// into a FHIR instant `YYYY-MM-DDThh:mm:00Z`.
pub(crate) fn fmt_instant(today: NaiveDate, minutes: i64) -> String {
    let d = today + Duration::days(minutes.div_euclid(1440));
    let m = minutes.rem_euclid(1440);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:00Z",
        d.year(),
        d.month(),
        d.day(),
        m / 60,
        m % 60
    )
}

/// The date `days` after `today` (negative: before).
pub(crate) fn day(today: NaiveDate, days: i64) -> NaiveDate {
    today + Duration::days(days)
}

pub(crate) fn coding(system: &str, code: &str, display: &str) -> Value {
    obj! { "system": system, "code": code, "display": display }
}

pub(crate) fn concept(system: &str, code: &str, display: &str) -> Value {
    obj! { "coding": arr![coding(system, code, display)], "text": display }
}

/// A CodeableConcept with a single coding and no text.
pub(crate) fn coded(system: &str, code: &str, display: &str) -> Value {
    obj! { "coding": arr![coding(system, code, display)] }
}

pub(crate) fn reference(resource_type: &str, id: &str) -> Value {
    obj! { "reference": format!("{resource_type}/{id}") }
}

/// Lower-case ASCII rendering of a name for e-mail local parts:
/// folds common accents and drops anything else that is not a letter.
pub(crate) fn ascii_fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = match c {
            'á' | 'à' | 'â' | 'ä' | 'Á' => 'a',
            'é' | 'è' | 'ê' | 'ë' | 'É' => 'e',
            'í' | 'ì' | 'î' | 'ï' | 'Í' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'Ó' => 'o',
            'ú' | 'ù' | 'û' | 'ü' | 'Ú' => 'u',
            'ŵ' => 'w',
            'ŷ' => 'y',
            c => c,
        };
        if c.is_ascii_alphabetic() {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn nhs_check_digits() {
        // Published example: 943 476 5919.
        assert_eq!(nhs_check_digit(&[9, 4, 3, 4, 7, 6, 5, 9, 1]), Some(9));
        assert_eq!(nhs_number(943_476_591).as_deref(), Some("9434765919"));
        // 401 023 213 7 is a commonly quoted valid number.
        assert_eq!(nhs_number(401_023_213).as_deref(), Some("4010232137"));
        // Remainder 1 -> check 10 -> invalid prefix.
        let invalid = (999_000_000..999_000_100).filter(|&p| nhs_number(p).is_none()).count();
        assert!(invalid > 0);
    }

    #[test]
    fn instants() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(fmt_instant(today, 9 * 60), "2026-11-23T09:00:00Z");
        assert_eq!(fmt_instant(today, -60), "2026-11-22T23:00:00Z");
        assert_eq!(fmt_instant(today, 1440 * 9 + 30), "2026-12-02T00:30:00Z");
        assert_eq!(fmt_date(day(today, -23)), "2026-10-31");
    }

    #[test]
    fn fold() {
        assert_eq!(ascii_fold("Siân O'Brien-Róisín"), "sianobrienroisin");
    }
}
