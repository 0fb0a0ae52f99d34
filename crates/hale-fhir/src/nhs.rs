//! NHS numbers: ten digits, the last a modulus-11 check digit.

/// True when `s` is ten ASCII digits (spaces allowed between groups, as in
/// "943 476 5919") whose check digit is correct under modulus 11.
///
/// Accepted layouts: ten contiguous digits, or the 3-3-4 grouping with single
/// spaces. Anything else (other separators, leading/trailing space) is invalid.
pub fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut digits = [0u8; 10];
    let ok = match b.len() {
        10 => b.iter().zip(digits.iter_mut()).all(|(c, d)| digit(*c, d)),
        12 => {
            b[3] == b' '
                && b[7] == b' '
                && b.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 7)
                    .zip(digits.iter_mut())
                    .all(|((_, c), d)| digit(*c, d))
        }
        _ => false,
    };
    if !ok {
        return false;
    }
    let mut first_nine = [0u8; 9];
    first_nine.copy_from_slice(&digits[..9]);
    check_digit(&first_nine) == Some(digits[9])
}

fn digit(c: u8, out: &mut u8) -> bool {
    *out = c.wrapping_sub(b'0');
    c.is_ascii_digit()
}

/// The check digit for nine leading digits, or None when the remainder gives 10
/// (no valid NHS number starts with those nine digits).
///
/// Each digit must be 0..=9 (a digit value, not an ASCII character).
pub fn check_digit(first_nine: &[u8; 9]) -> Option<u8> {
    let sum: u32 = first_nine
        .iter()
        .zip((2..=10u32).rev())
        .map(|(d, w)| u32::from(*d) * w)
        .sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

/// Strip spaces: "943 476 5919" -> "9434765919".
pub fn normalise(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: bool) {
        assert_eq!(is_valid(input), expect, "is_valid({input:?})");
    }

    #[test]
    fn nhs_numbers() {
        check("9434765919", true);
        check("943 476 5919", true);
        check("9434765918", false); // wrong check digit
        check("9434765910", false);
        check("4010232137", true);
        check("401 023 2137", true);
        check("9990000018", true); // test range 999 000 0000 - 999 999 9999
        check("999 000 0018", true);
        check("9990000026", true);
        check("9990000017", false);
        check("9999999999", true);
        check("9999999998", false);
        check("0000000000", true); // remainder 0 -> check 11 -> 0
        check("1000000001", true);
        check("0000000060", false); // check digit would be 10: never valid
        check("0000000061", false);
        check("", false);
        check("943476591", false); // nine digits
        check("94347659190", false); // eleven digits
        check("94347659l9", false); // letter
        check("943-476-5919", false);
        check(" 9434765919", false);
        check("9434765919 ", false);
        check("943 4765919", false);
        check("94 3476 5919", false);
        check("943  476 5919", false);
        check("９４３４７６５９１９", false); // full-width digits
    }

    #[test]
    fn check_digits() {
        assert_eq!(check_digit(&[9, 4, 3, 4, 7, 6, 5, 9, 1]), Some(9));
        assert_eq!(check_digit(&[0, 0, 0, 0, 0, 0, 0, 0, 6]), None);
        assert_eq!(check_digit(&[1, 0, 0, 0, 0, 0, 0, 0, 0]), Some(1));
        assert_eq!(check_digit(&[0; 9]), Some(0));
        assert_eq!(check_digit(&[9, 9, 9, 0, 0, 0, 0, 0, 1]), Some(8));
    }

    #[test]
    fn normalise_strips_spaces() {
        assert_eq!(normalise("943 476 5919"), "9434765919");
    }
}
