//! Test-range NHS numbers (999 000 0000 – 999 999 9999), unique per run.
//!
//! Private modulus-11 implementation so the bench does not depend on
//! `hale_fhir::nhs` (and so a bug there cannot hide behind a bug here).

use std::sync::atomic::{AtomicU32, Ordering};

/// How many distinct nine-digit prefixes the test range has (999 followed by
/// six free digits). About 1 in 11 has no valid check digit.
const PREFIXES: u32 = 1_000_000;
const RANGE_START: u32 = 999_000_000;

/// Modulus-11 check digit for nine leading digits; None when no valid number has them.
pub(crate) fn check_digit(first_nine: &[u8; 9]) -> Option<u8> {
    hale_fhir::nhs::check_digit(first_nine)
}

/// The ten-digit NHS number for a nine-digit prefix, or None when that prefix
/// has no valid check digit.
pub(crate) fn with_check_digit(prefix: u32) -> Option<String> {
    debug_assert!(prefix < 1_000_000_000);
    let mut digits = [0u8; 9];
    let mut p = prefix;
    for d in digits.iter_mut().rev() {
        *d = (p % 10) as u8;
        p /= 10;
    }
    let check = check_digit(&digits)?;
    Some(format!("{prefix:09}{check}"))
}

/// True when `s` is ten ASCII digits with a correct check digit.
#[cfg(test)]
pub(crate) fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut first = [0u8; 9];
    for (d, &c) in first.iter_mut().zip(b) {
        *d = c - b'0';
    }
    check_digit(&first) == Some(b[9] - b'0')
}

/// Hands out distinct valid test-range NHS numbers, starting at a run-specific
/// offset and walking the range once (wrapping at the end). Shared by all
/// connections of a run.
#[derive(Debug)]
pub(crate) struct NhsGen {
    start: u32,
    next: AtomicU32,
}

impl NhsGen {
    pub(crate) fn new(seed: u64) -> Self {
        NhsGen {
            start: (seed % u64::from(PREFIXES)) as u32,
            next: AtomicU32::new(0),
        }
    }

    /// The next unused valid number, or None once every prefix in the test
    /// range has been handed out (about 909,000 numbers).
    pub(crate) fn next(&self) -> Option<String> {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= PREFIXES {
                // Keep it pinned so repeated calls cannot wrap the u32.
                self.next.store(PREFIXES, Ordering::Relaxed);
                return None;
            }
            let prefix = RANGE_START + (self.start + n) % PREFIXES;
            if let Some(s) = with_check_digit(prefix) {
                return Some(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn digits(s: &str) -> [u8; 9] {
        let mut d = [0u8; 9];
        for (x, c) in d.iter_mut().zip(s.bytes()) {
            *x = c - b'0';
        }
        d
    }

    #[test]
    fn check_digit_cases() {
        fn check(first_nine: &str, expected: Option<u8>) {
            assert_eq!(check_digit(&digits(first_nine)), expected, "{first_nine}");
        }
        check("943476591", Some(9)); // 943 476 5919, the NHS's own example
        check("401023213", Some(7)); // 401 023 2137
        check("999000001", Some(8)); // 999 000 0018
        check("999000005", Some(0)); // remainder 0: 11 -> 0
        check("999000000", None); // remainder 1: 10 -> invalid
        check("999123456", None);
        check("999999999", Some(9));
        check("000000000", Some(0));
    }

    #[test]
    fn validity_cases() {
        fn check(input: &str, expected: bool) {
            assert_eq!(is_valid(input), expected, "{input:?}");
        }
        check("9434765919", true);
        check("9434765918", false);
        check("9990000018", true);
        check("9990000050", true);
        check("9991234560", false); // 999123456 has no valid check digit
        check("999000001", false); // too short
        check("99900000188", false); // too long
        check("99900000a8", false);
    }

    #[test]
    fn with_check_digit_pads_and_appends() {
        fn check(prefix: u32, expected: Option<&str>) {
            assert_eq!(with_check_digit(prefix).as_deref(), expected, "{prefix}");
        }
        check(999_000_001, Some("9990000018"));
        check(999_000_000, None);
        check(1, Some("0000000019"));
    }

    #[test]
    fn generator_yields_unique_valid_test_range_numbers() {
        let g = NhsGen::new(123_456_789);
        let mut seen = HashSet::new();
        for _ in 0..20_000 {
            let n = g.next().unwrap();
            assert!(is_valid(&n), "{n}");
            assert!(n.starts_with("999"), "{n}");
            assert!(seen.insert(n.clone()), "duplicate {n}");
        }
    }

    #[test]
    fn generator_wraps_at_top_of_range_then_runs_out() {
        // Start near the top: the walk wraps to 999 000 000x.
        let g = NhsGen::new(u64::from(PREFIXES) - 3);
        let first: Vec<String> = (0..5).map(|_| g.next().unwrap()).collect();
        assert!(first.iter().any(|n| n.starts_with("999999")));
        assert!(first.iter().any(|n| n.starts_with("999000")));

        let g = NhsGen::new(0);
        let mut count = 0u32;
        let mut seen = HashSet::new();
        while let Some(n) = g.next() {
            assert!(seen.insert(n));
            count += 1;
        }
        // Roughly 10 in 11 prefixes are valid.
        assert!((900_000..=920_000).contains(&count), "{count}");
        assert_eq!(g.next(), None);
    }
}
