//! FHIR date, dateTime and instant values as inclusive UTC millisecond ranges.

/// Parse a FHIR `date`, `dateTime` or `instant` into the inclusive range of
/// instants it denotes, in ms since the Unix epoch. A partial value covers its
/// whole period ("2024" is all of 2024). A value without a zone is taken as UTC.
/// Returns None when the text is not a valid FHIR date/dateTime/instant.
pub fn parse_range_ms(text: &str) -> Option<(i64, i64)> {
    let _ = text;
    todo!()
}

/// Format ms since the epoch as a FHIR `instant` (`2024-05-01T09:30:00.000Z`).
pub fn format_instant_ms(ms: i64) -> String {
    let _ = ms;
    todo!()
}
