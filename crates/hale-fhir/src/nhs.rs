//! NHS numbers: ten digits, the last a modulus-11 check digit.

/// True when `s` is ten ASCII digits (spaces allowed between groups, as in
/// "943 476 5919") whose check digit is correct under modulus 11.
pub fn is_valid(s: &str) -> bool {
    let _ = s;
    todo!()
}

/// The check digit for nine leading digits, or None when the remainder gives 10
/// (no valid NHS number starts with those nine digits).
pub fn check_digit(first_nine: &[u8; 9]) -> Option<u8> {
    let _ = first_nine;
    todo!()
}

/// Strip spaces: "943 476 5919" -> "9434765919".
pub fn normalise(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}
