//! RFC 4180 CSV: CRLF line ends, fields quoted when they hold a comma, quote,
//! CR or LF (quotes doubled), UTF-8 with a byte-order mark so that
//! spreadsheet programs on downtime PCs read accented names correctly.
//!
//! A field a spreadsheet would run as a formula (starting with `=`, `@`, a tab
//! or CR, or `+`/`-` followed by anything but a number or phone number) gets a
//! leading `'`, the usual defence against CSV formula injection. Phone numbers
//! such as `+44 141 496 0000` are left alone.

/// UTF-8 byte-order mark.
const BOM: &str = "\u{FEFF}";

/// Builds one CSV file in memory.
pub(crate) struct CsvWriter {
    out: String,
    columns: usize,
}

fn number_like(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '(' | ')' | '.' | '-' | '+'))
}

/// The field as written: neutralised if a spreadsheet would run it, then quoted if needed.
pub(crate) fn field(value: &str) -> String {
    let risky = match value.chars().next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => !number_like(&value[1..]),
        _ => false,
    };
    let value = if risky { format!("'{value}") } else { value.to_string() };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

impl CsvWriter {
    pub(crate) fn new(header: &[&str]) -> CsvWriter {
        let mut w = CsvWriter {
            out: String::from(BOM),
            columns: header.len(),
        };
        w.row(header);
        w
    }

    /// One record; must have as many fields as the header.
    pub(crate) fn row<S: AsRef<str>>(&mut self, fields: &[S]) {
        debug_assert_eq!(fields.len(), self.columns, "CSV row width");
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(&field(f.as_ref()));
        }
        self.out.push_str("\r\n");
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, want: &str) {
        assert_eq!(field(input), want, "field({input:?})");
    }

    #[test]
    fn field_cases() {
        check("", "");
        check("plain", "plain");
        check("Smith, John", "\"Smith, John\"");
        check("say \"hi\"", "\"say \"\"hi\"\"\"");
        check("two\nlines", "\"two\nlines\"");
        check("cr\rlf", "\"cr\rlf\"");
        check("Zoë", "Zoë");
        check("=SUM(A1)", "'=SUM(A1)");
        check("@cmd", "'@cmd");
        check("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0");
        check("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\"");
        check("-2+3", "-2+3");
        check("+44 141 496 0000", "+44 141 496 0000");
        check("-12.5", "-12.5");
        check("07700 900123", "07700 900123");
        check("\tTAB", "'\tTAB");
    }

    #[test]
    fn rows_end_in_crlf_and_start_with_bom() {
        let mut w = CsvWriter::new(&["a", "b"]);
        w.row(&["1", "x,y"]);
        let text = String::from_utf8(w.into_bytes()).unwrap();
        assert_eq!(text, "\u{FEFF}a,b\r\n1,\"x,y\"\r\n");
    }
}
