//! Properties of search parameter parsing (`hale_fhir::search::parse_query`)
//! on arbitrary and on generated well-formed queries.

use chrono::{NaiveDate, NaiveDateTime};
use hale_fhir::search::{
    find_param, normalise_string, parse_query, search_params, DateOp, Facet, Include, ParamKind, Predicate,
    SearchQuery, SortKey, CLAUSES_MAX, COUNT_DEFAULT, COUNT_MAX, OFFSET_MAX,
};
use hale_fhir::{Issue, IssueCode, ResourceType, Severity};
use proptest::prelude::*;

type Pairs = Vec<(String, String)>;

fn pairs(list: &[(&str, &str)]) -> Pairs {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Escape a search value's separators as the FHIR search grammar says:
/// `\` `,` `|` `$` each get a backslash.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '|' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The one clause a single-parameter query gives.
fn only_clause(q: &SearchQuery) -> &hale_fhir::search::Clause {
    assert_eq!(q.clauses.len(), 1, "one clause expected: {q:?}");
    &q.clauses[0]
}

/// What every parse must be: a query within the limits, or an error issue
/// that names one of the query's keys (or, inside a chain, a part of one).
fn check_outcome(pairs: &Pairs, r: &Result<SearchQuery, Issue>) -> Result<(), TestCaseError> {
    match r {
        Ok(q) => {
            prop_assert!(q.count <= COUNT_MAX, "count {} over the limit", q.count);
            prop_assert!(q.offset <= OFFSET_MAX, "offset {} over the limit", q.offset);
            prop_assert!(q.clauses.len() <= CLAUSES_MAX);
            for k in &q.ignored_keys {
                prop_assert!(
                    pairs.iter().any(|(key, _)| key == k),
                    "ignored key {k:?} not in the query"
                );
            }
        }
        Err(issue) => {
            prop_assert_eq!(issue.severity, Severity::Error);
            prop_assert!(!issue.diagnostics.is_empty());
            let Some(expr) = &issue.expression else {
                return Err(TestCaseError::fail(format!("error without the parameter: {issue:?}")));
            };
            prop_assert!(
                pairs.iter().any(|(key, _)| key == expr),
                "error names {expr:?}, which is not a key of the query {pairs:?}: {issue:?}"
            );
        }
    }
    Ok(())
}

const TYPES: &[ResourceType] = &[
    ResourceType::Patient,
    ResourceType::Observation,
    ResourceType::Appointment,
    ResourceType::Encounter,
    ResourceType::RiskAssessment,
    ResourceType::AuditEvent,
    ResourceType::Slot,
];

/// Query-string text: separators, `+`, and percent escapes, valid (one- and
/// two-byte UTF-8) and not.
const QUERY_VALUE: &str =
    "([a-z0-9_:.%=&+,|$\\\\é-]|%[0-9A-Fa-f]{2}|%[c-d][0-9a-f]%[89ab][0-9a-f]|%[0-7][0-9a-f]){0,16}";

/// Every parameter name of the types above, plus result parameters.
fn known_names() -> Vec<String> {
    let mut names: Vec<String> = TYPES
        .iter()
        .flat_map(|t| search_params(*t).iter().map(|d| d.name.to_string()))
        .collect();
    for n in [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_count",
        "_offset",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_total",
        "_elements",
        "_has",
        "_format",
    ] {
        names.push(n.to_string());
    }
    names.sort();
    names.dedup();
    names
}

fn arb_key() -> impl Strategy<Value = String> {
    let modifiers = prop::sample::select(vec![
        "",
        ":exact",
        ":contains",
        ":missing",
        ":not",
        ":text",
        ":of-type",
        ":identifier",
        ":below",
        ":above",
        ":iterate",
        ":Patient",
        ":Practitioner",
        ":Nope",
        ":",
        "::",
    ]);
    prop_oneof![
        4 => (prop::sample::select(known_names()), modifiers).prop_map(|(n, m)| format!("{n}{m}")),
        2 => "\\PC{0,16}",
        1 => "[a-z-]{1,10}(:[A-Z][a-z]{2,8})?\\.[a-z-]{1,10}(:[a-z]{1,6})?(\\.[a-z]{1,6})?",
        1 => "_has(:[A-Z][a-zA-Z]{2,12}(:[a-z-]{1,10}(:[a-z_-]{1,10}(:[a-z]{1,6})?)?)?)?",
        1 => "(subject|patient|general-practitioner)(:(Patient|Group))?\\.(name|birthdate|identifier|gender|organization)(\\.name)?",
    ]
}

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "(eq|ne|gt|lt|ge|le|sa|eb|ap|xx)?[0-9.eE+-]{0,12}(\\|[a-z:/.]{0,8}\\|[a-z]{0,4})?",
        "[a-zA-Z0-9|,$\\\\:/._ -]{0,24}",
        "(eq|ne|gt|lt|ge|le|sa|eb|ap)?[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{0,5})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?",
        "(true|false|[A-Z][a-z]{2,10}:[a-z-]{1,12}(:[A-Z][a-z]{2,8})?|-?[a-z_]{1,10}(,-?[a-z_]{1,10}){0,3})",
        "[0-9]{1,25}",
    ]
}

fn arb_type() -> impl Strategy<Value = ResourceType> {
    prop::sample::select(TYPES.to_vec())
}

// ---------------------------------------------------------------------------
// Generated well-formed values

#[derive(Debug, Clone)]
struct GenToken {
    system: Option<String>,
    code: String,
}

impl GenToken {
    fn render(&self) -> String {
        match &self.system {
            Some(s) => format!("{}|{}", esc(s), esc(&self.code)),
            None => esc(&self.code),
        }
    }
    fn expected(&self) -> Predicate {
        Predicate::Token {
            system: self.system.clone(),
            code: (!self.code.is_empty()).then(|| self.code.clone()),
        }
    }
}

/// Text with every character the token and quantity grammars treat specially.
const TOKEN_TEXT: &str = "[a-zA-Z0-9:/.,|$\\\\é_ -]";

fn arb_token() -> impl Strategy<Value = GenToken> {
    let text = move |min: usize| prop::string::string_regex(&format!("{TOKEN_TEXT}{{{min},12}}")).unwrap();
    prop_oneof![
        (text(0), text(1)).prop_map(|(s, c)| GenToken {
            system: Some(s),
            code: c
        }),
        // `system|`: any code in that system.
        text(1).prop_map(|s| GenToken {
            system: Some(s),
            code: String::new()
        }),
        text(1).prop_map(|c| GenToken { system: None, code: c }),
    ]
}

#[derive(Debug, Clone)]
struct GenDate {
    prefix: Option<&'static str>,
    y: i32,
    m: u32,
    d: u32,
    hh: u32,
    mm: u32,
    ss: u32,
    frac: String,
    /// 0 year, 1 month, 2 day, 3 minute, 4 second, 5 fraction.
    precision: u8,
    /// Minutes east of UTC, or None for `Z`/no zone.
    zone: Option<i32>,
    z: bool,
}

impl GenDate {
    fn render(&self) -> String {
        let mut s = format!("{}{:04}", self.prefix.unwrap_or(""), self.y);
        if self.precision >= 1 {
            s += &format!("-{:02}", self.m);
        }
        if self.precision >= 2 {
            s += &format!("-{:02}", self.d);
        }
        if self.precision >= 3 {
            s += &format!("T{:02}:{:02}", self.hh, self.mm);
            if self.precision >= 4 {
                s += &format!(":{:02}", self.ss);
            }
            if self.precision >= 5 {
                s += &format!(".{}", self.frac);
            }
            match self.zone {
                Some(z) => {
                    let sign = if z < 0 { '-' } else { '+' };
                    s += &format!("{sign}{:02}:{:02}", z.abs() / 60, z.abs() % 60);
                }
                None if self.z => s.push('Z'),
                None => {}
            }
        }
        s
    }

    fn op(&self) -> DateOp {
        match self.prefix {
            None | Some("eq") => DateOp::Eq,
            Some("ne") => DateOp::Ne,
            Some("gt") => DateOp::Gt,
            Some("lt") => DateOp::Lt,
            Some("ge") => DateOp::Ge,
            Some("le") => DateOp::Le,
            Some("sa") => DateOp::Sa,
            Some("eb") => DateOp::Eb,
            Some(p) => unreachable!("{p}"),
        }
    }

    /// The inclusive ms range, computed with chrono (not with Hale's parser).
    fn range(&self) -> (i64, i64) {
        let ms = |y: i32, m: u32, d: u32| -> i64 {
            NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        match self.precision {
            0 => (ms(self.y, 1, 1), ms(self.y + 1, 1, 1) - 1),
            1 => {
                let (ny, nm) = if self.m == 12 {
                    (self.y + 1, 1)
                } else {
                    (self.y, self.m + 1)
                };
                (ms(self.y, self.m, 1), ms(ny, nm, 1) - 1)
            }
            2 => {
                let start = ms(self.y, self.m, self.d);
                (start, start + 86_400_000 - 1)
            }
            p => {
                let digits = self.frac.len().min(3);
                let frac_ms: i64 = if p >= 5 {
                    let given: i64 = self.frac[..digits].parse().unwrap();
                    given * 10i64.pow(3 - digits as u32)
                } else {
                    0
                };
                let span: i64 = match p {
                    3 => 60_000,
                    4 => 1000,
                    _ => 10i64.pow(3 - digits as u32),
                };
                let local: NaiveDateTime = NaiveDate::from_ymd_opt(self.y, self.m, self.d)
                    .unwrap()
                    .and_hms_milli_opt(self.hh, self.mm, if p >= 4 { self.ss } else { 0 }, frac_ms as u32)
                    .unwrap();
                let start = local.and_utc().timestamp_millis() - i64::from(self.zone.unwrap_or(0)) * 60_000;
                (start, start + span - 1)
            }
        }
    }
}

fn days_in(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    NaiveDate::from_ymd_opt(ny, nm, 1).unwrap().pred_opt().unwrap().day0() + 1
}

use chrono::Datelike;

fn arb_date() -> impl Strategy<Value = GenDate> {
    let prefix = prop::option::of(prop::sample::select(vec![
        "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb",
    ]));
    (1i32..=9999, 1u32..=12)
        .prop_flat_map(move |(y, m)| {
            (
                prefix.clone(),
                Just(y),
                Just(m),
                1..=days_in(y, m),
                (0u32..24, 0u32..60, 0u32..60, "[0-9]{1,5}"),
                0u8..=5,
                prop_oneof![Just(None), (-14 * 60..=14 * 60i32).prop_map(Some)],
                any::<bool>(),
            )
        })
        .prop_map(|(prefix, y, m, d, (hh, mm, ss, frac), precision, zone, z)| GenDate {
            prefix,
            y,
            m,
            d,
            hh,
            mm,
            ss,
            frac,
            precision,
            zone,
            z,
        })
}

#[derive(Debug, Clone)]
struct GenNumber {
    prefix: Option<&'static str>,
    text: String,
}

impl GenNumber {
    fn op(&self) -> DateOp {
        match self.prefix {
            None | Some("eq") => DateOp::Eq,
            Some("ne") => DateOp::Ne,
            Some("gt") => DateOp::Gt,
            Some("lt") => DateOp::Lt,
            Some("ge") => DateOp::Ge,
            Some("le") => DateOp::Le,
            Some("sa") => DateOp::Sa,
            Some("eb") => DateOp::Eb,
            Some("ap") => DateOp::Ap,
            Some(p) => unreachable!("{p}"),
        }
    }
    fn render(&self) -> String {
        format!("{}{}", self.prefix.unwrap_or(""), self.text)
    }
    /// Half a unit of the last digit written: `100` -> 0.5, `1.50` -> 0.005, `1e2` -> 50.
    fn half(&self) -> f64 {
        let (mantissa, exp) = match self.text.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i32>().unwrap()),
            None => (self.text.as_str(), 0),
        };
        let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
        0.5 * 10f64.powi(exp - decimals)
    }
}

fn arb_number() -> impl Strategy<Value = GenNumber> {
    (
        prop::option::of(prop::sample::select(vec![
            "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap",
        ])),
        "-?[0-9]{1,6}(\\.[0-9]{1,4})?([eE]-?[0-3])?",
    )
        .prop_map(|(prefix, text)| GenNumber { prefix, text })
}

fn check_number(n: &GenNumber, op: DateOp, value: f64, lo: f64, hi: f64) -> Result<(), TestCaseError> {
    let want: f64 = n.text.parse().unwrap();
    prop_assert_eq!(op, n.op());
    prop_assert_eq!(value, want);
    let half = n.half();
    if n.op() == DateOp::Ap {
        let d = (want.abs() * 0.1).max(half);
        prop_assert!((lo - (want - d)).abs() <= d * 1e-9 && (hi - (want + d)).abs() <= d * 1e-9);
    } else {
        prop_assert!((lo - (want - half)).abs() <= half * 1e-9, "lo {lo} for {n:?}");
        prop_assert!((hi - (want + half)).abs() <= half * 1e-9, "hi {hi} for {n:?}");
    }
    Ok(())
}

/// Whether Hale documents `modifier` as meaningful on a parameter of `kind`
/// (ARCHITECTURE.md, "Search parameters"). `_id` and `_lastUpdated` take no
/// token modifiers.
fn modifier_allowed(name: &str, kind: ParamKind, targets: &[ResourceType], modifier: &str) -> bool {
    let special = matches!(name, "_id" | "_lastUpdated");
    match (kind, modifier) {
        (_, "missing") => true,
        (ParamKind::String, "exact" | "contains") => true,
        (ParamKind::Token, "not" | "text" | "of-type") => !special,
        (ParamKind::Reference, "identifier") => true,
        (ParamKind::Reference, m) => m
            .parse::<ResourceType>()
            .is_ok_and(|t| targets.is_empty() || targets.contains(&t)),
        (ParamKind::Uri, "below" | "above") => true,
        _ => false,
    }
}

/// A value that parses for `kind` under `modifier`.
fn value_for(kind: ParamKind, modifier: &str) -> &'static str {
    match (kind, modifier) {
        (_, "missing") => "true",
        (_, "of-type") => "http://terminology.hl7.org/CodeSystem/v2-0203|MR|123",
        (ParamKind::Reference, "identifier") => "https://fhir.nhs.uk/Id/ods|X1",
        (ParamKind::Reference, _) => "abc",
        (ParamKind::Token, _) => "http://x.org|c",
        (ParamKind::String, _) => "Smi",
        (ParamKind::Date, _) => "2020-01",
        (ParamKind::Uri, _) => "http://x.org/a/b",
        (ParamKind::Number | ParamKind::Quantity, _) => "5",
        (ParamKind::Composite, _) => "http://loinc.org|1234-5$5",
        (ParamKind::Special, _) => "x",
    }
}

/// (type, parameter) covering every kind of parameter.
const MODIFIER_TARGETS: &[(ResourceType, &str)] = &[
    (ResourceType::Patient, "identifier"),
    (ResourceType::Patient, "gender"),
    (ResourceType::Patient, "name"),
    (ResourceType::Patient, "family"),
    (ResourceType::Patient, "birthdate"),
    (ResourceType::Patient, "general-practitioner"),
    (ResourceType::Patient, "_profile"),
    (ResourceType::Patient, "_id"),
    (ResourceType::Patient, "_lastUpdated"),
    (ResourceType::Patient, "_tag"),
    (ResourceType::Observation, "subject"),
    (ResourceType::Observation, "value-quantity"),
    (ResourceType::Observation, "code-value-quantity"),
    (ResourceType::RiskAssessment, "probability"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary (name, value) pairs, strict and lenient: never a panic; an
    /// accepted query is within the limits, a refused one names a key.
    #[test]
    fn arbitrary_pairs_never_panic(rtype in arb_type(), ps in prop::collection::vec((arb_key(), arb_value()), 0..6), strict in any::<bool>()) {
        let r = parse_query(rtype, &ps, strict);
        check_outcome(&ps, &r)?;
        // Lenient handling never refuses what strict handling accepts.
        if strict && r.is_ok() {
            prop_assert!(parse_query(rtype, &ps, false).is_ok());
        }
    }

    /// An arbitrary query string, percent-decoded the way the server does it
    /// (`form_urlencoded`): never a panic.
    #[test]
    fn arbitrary_query_strings_never_panic(rtype in arb_type(), segments in prop::collection::vec((prop_oneof![prop::sample::select(known_names()), "[a-z_]{0,6}"], "(:[a-zA-Z-]{0,8}|\\.[a-z-]{1,8}|%3[Aa][a-z]{1,6}|%2[Ee][a-z]{1,6})?", QUERY_VALUE), 0..6), tail in QUERY_VALUE, strict in any::<bool>()) {
        let mut q = segments.iter().map(|(n, m, v)| format!("{n}{m}={v}")).collect::<Vec<_>>().join("&");
        q += &tail;
        let ps: Pairs = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        check_outcome(&ps, &parse_query(rtype, &ps, strict))?;
    }

    /// Arbitrary bytes, percent-encoded as a value of a known key (and as a
    /// key), decode to the same pairs and never panic the parser.
    #[test]
    fn percent_encoded_bytes_never_panic(rtype in arb_type(), name in prop::sample::select(known_names()), bytes in prop::collection::vec(any::<u8>(), 0..24)) {
        let enc: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let q = format!("{name}={enc}&{enc}=x");
        let ps: Pairs = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        prop_assert_eq!(&ps[0].1, &String::from_utf8_lossy(&bytes).into_owned());
        check_outcome(&ps, &parse_query(rtype, &ps, true))?;
        check_outcome(&ps, &parse_query(rtype, &ps, false))?;
    }

    /// Pairs encoded by the server's serialiser and decoded again parse the same.
    #[test]
    fn percent_encoding_round_trips(rtype in arb_type(), ps in prop::collection::vec((arb_key(), arb_value()), 0..4)) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &ps {
            ser.append_pair(k, v);
        }
        let q = ser.finish();
        let back: Pairs = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        prop_assert_eq!(&back, &ps);
        prop_assert_eq!(parse_query(rtype, &back, false), parse_query(rtype, &ps, false));
    }

    /// Tokens with escaped `\` `,` `|` `$`: the parsed system and code are the
    /// generated ones, one OR alternative per comma-separated value.
    #[test]
    fn tokens_parse_to_their_components(tokens in prop::collection::vec(arb_token(), 1..6), not in any::<bool>()) {
        let value = tokens.iter().map(GenToken::render).collect::<Vec<_>>().join(",");
        let key = if not { "identifier:not" } else { "identifier" };
        let q = parse_query(ResourceType::Patient, &pairs(&[(key, &value)]), true)
            .map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let c = only_clause(&q);
        prop_assert_eq!(c.param, "identifier");
        prop_assert_eq!(c.not, not);
        let want: Vec<Predicate> = tokens.iter().map(GenToken::expected).collect();
        prop_assert_eq!(&c.alternatives, &want, "value {:?}", value);
    }

    /// `system|` with an empty system as well is no token: an error naming the key.
    #[test]
    fn empty_tokens_are_refused(before in prop::collection::vec(arb_token(), 0..3)) {
        let mut parts: Vec<String> = before.iter().map(GenToken::render).collect();
        parts.push("|".into());
        let value = parts.join(",");
        let r = parse_query(ResourceType::Patient, &pairs(&[("identifier", &value)]), false);
        prop_assert!(matches!(&r, Err(i) if i.code == IssueCode::Value && i.expression.as_deref() == Some("identifier")), "{:?}", r);
    }

    /// Dates with a prefix: the prefix and the inclusive range are those
    /// generated (computed independently with chrono), one alternative each.
    #[test]
    fn dates_parse_to_their_prefix_and_range(dates in prop::collection::vec(arb_date(), 1..5)) {
        let value = dates.iter().map(GenDate::render).collect::<Vec<_>>().join(",");
        let q = parse_query(ResourceType::Patient, &pairs(&[("birthdate", &value)]), true)
            .map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let c = only_clause(&q);
        prop_assert_eq!(c.alternatives.len(), dates.len());
        for (d, p) in dates.iter().zip(&c.alternatives) {
            let (start_ms, end_ms) = d.range();
            prop_assert_eq!(p, &Predicate::Date { op: d.op(), start_ms, end_ms }, "{}", d.render());
        }
    }

    /// `ap` on a date is refused as not supported, never read as `eq`.
    #[test]
    fn approximate_dates_are_refused(d in arb_date()) {
        let value = format!("ap{}", GenDate { prefix: None, ..d }.render());
        let r = parse_query(ResourceType::Patient, &pairs(&[("birthdate", &value)]), false);
        prop_assert!(matches!(&r, Err(i) if i.code == IssueCode::NotSupported && i.expression.as_deref() == Some("birthdate")), "{:?}", r);
    }

    /// Numbers with a prefix: the prefix and value are those generated and the
    /// range is the value's precision (10% for `ap`).
    #[test]
    fn numbers_parse_to_their_prefix_and_precision(nums in prop::collection::vec(arb_number(), 1..5)) {
        let value = nums.iter().map(GenNumber::render).collect::<Vec<_>>().join(",");
        let q = parse_query(ResourceType::RiskAssessment, &pairs(&[("probability", &value)]), true)
            .map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let c = only_clause(&q);
        prop_assert_eq!(c.alternatives.len(), nums.len());
        for (n, p) in nums.iter().zip(&c.alternatives) {
            let Predicate::Number { op, value, lo, hi } = p else {
                return Err(TestCaseError::fail(format!("not a number: {p:?}")));
            };
            check_number(n, *op, value.0, lo.0, hi.0)?;
        }
    }

    /// Quantities `[prefix]number|system|code` with escaped system and code.
    #[test]
    fn quantities_parse_to_their_components(n in arb_number(), unit in prop::option::of((prop::string::string_regex(&format!("{TOKEN_TEXT}{{0,10}}")).unwrap(), prop::string::string_regex(&format!("{TOKEN_TEXT}{{0,6}}")).unwrap()))) {
        let value = match &unit {
            Some((s, c)) => format!("{}|{}|{}", n.render(), esc(s), esc(c)),
            None => n.render(),
        };
        let q = parse_query(ResourceType::Observation, &pairs(&[("value-quantity", &value)]), true)
            .map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let c = only_clause(&q);
        prop_assert_eq!(c.alternatives.len(), 1);
        let Predicate::Quantity { op, value: v, lo, hi, system, code } = &c.alternatives[0] else {
            return Err(TestCaseError::fail(format!("not a quantity: {:?}", c.alternatives)));
        };
        check_number(&n, *op, v.0, lo.0, hi.0)?;
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        prop_assert_eq!(system, &unit.as_ref().and_then(|(s, _)| nonempty(s)));
        prop_assert_eq!(code, &unit.as_ref().and_then(|(_, c)| nonempty(c)));
    }

    /// References `Type/id`, bare ids under a type modifier, and a mismatched
    /// type modifier refused.
    #[test]
    fn references_parse_to_type_and_id(
        refs in prop::collection::vec((prop::sample::select(vec!["Patient", "Group", "Device", "Location"]), "[A-Za-z0-9.-]{1,64}", any::<bool>()), 1..5),
        modifier in prop::option::of(prop::sample::select(vec!["Patient", "Group"])),
    ) {
        let value = refs
            .iter()
            .map(|(t, id, bare)| if *bare && modifier.is_some() { id.clone() } else { format!("{t}/{id}") })
            .collect::<Vec<_>>()
            .join(",");
        let key = match modifier { Some(m) => format!("subject:{m}"), None => "subject".to_string() };
        let r = parse_query(ResourceType::Observation, &[(key.clone(), value.clone())], true);
        let mismatch = refs.iter().any(|(t, _, bare)| !*bare && modifier.is_some_and(|m| m != *t));
        if mismatch {
            prop_assert!(matches!(&r, Err(i) if i.expression.as_deref() == Some(key.as_str())), "{:?}", r);
            return Ok(());
        }
        let q = r.map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let c = only_clause(&q);
        let want: Vec<Predicate> = refs
            .iter()
            .map(|(t, id, bare)| Predicate::Reference {
                rtype: Some(match modifier { Some(m) if *bare => m, _ => t }.to_string()),
                id: id.clone(),
            })
            .collect();
        prop_assert_eq!(&c.alternatives, &want);
    }

    /// Strings: `:exact` keeps the unescaped text as written, the default and
    /// `:contains` use the normalised text; one alternative per value.
    #[test]
    fn strings_parse_per_modifier(texts in prop::collection::vec("[a-zA-Zé0-9 ,|$\\\\]{0,8}[a-zA-Z0-9][a-zA-Zé0-9 ,|$\\\\]{0,8}", 1..5), modifier in prop::sample::select(vec!["", ":exact", ":contains"])) {
        let value = texts.iter().map(|t| esc(t)).collect::<Vec<_>>().join(",");
        let key = format!("family{modifier}");
        let q = parse_query(ResourceType::Patient, &[(key, value.clone())], true)
            .map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let c = only_clause(&q);
        let want: Vec<Predicate> = texts
            .iter()
            .map(|t| match modifier {
                ":exact" => Predicate::StrExact(t.clone()),
                ":contains" => Predicate::StrContains(normalise_string(t)),
                _ => Predicate::StrPrefix(normalise_string(t)),
            })
            .collect();
        prop_assert_eq!(&c.alternatives, &want, "{:?}", value);
    }

    /// A modifier is applied as documented or the search is refused, under
    /// either handling: never accepted and dropped (that widens the search).
    #[test]
    fn modifiers_are_applied_or_refused(
        target in prop::sample::select(MODIFIER_TARGETS.to_vec()),
        modifier in prop::sample::select(vec!["exact", "contains", "missing", "not", "text", "of-type", "identifier", "below", "above", "Patient", "Practitioner", "Organization", "iterate", "Exact", "foo", ""]),
        strict in any::<bool>(),
    ) {
        let (rtype, name) = target;
        let def = find_param(rtype, name).expect("a known parameter");
        let key = format!("{name}:{modifier}");
        let value = value_for(def.kind, modifier);
        let r = parse_query(rtype, &[(key.clone(), value.to_string())], strict);
        if !modifier_allowed(name, def.kind, def.targets, modifier) {
            prop_assert!(matches!(&r, Err(i) if i.expression.as_deref() == Some(key.as_str())), "{} accepted: {:?}", key, r);
            return Ok(());
        }
        let q = r.map_err(|e| TestCaseError::fail(format!("{key}={value}: {e:?}")))?;
        let c = only_clause(&q);
        prop_assert_eq!(c.param, def.name);
        prop_assert!(q.ignored_keys.is_empty());
        let all = |f: &dyn Fn(&Predicate) -> bool| !c.alternatives.is_empty() && c.alternatives.iter().all(f);
        let applied = match modifier {
            "missing" => c.missing == Some(true) && c.alternatives.is_empty(),
            "not" => c.not,
            "text" => c.facet == Facet::Text,
            "of-type" => c.facet == Facet::OfType,
            "identifier" => c.facet == Facet::Identifier,
            "exact" => all(&|p| matches!(p, Predicate::StrExact(_))),
            "contains" => all(&|p| matches!(p, Predicate::StrContains(_))),
            "below" => all(&|p| matches!(p, Predicate::UriBelow(_))),
            "above" => all(&|p| matches!(p, Predicate::UriAbove(_))),
            t => all(&|p| matches!(p, Predicate::Reference { rtype: Some(r), .. } if r == t)),
        };
        prop_assert!(applied, "{} parsed without its modifier: {:?}", key, c);
    }

    /// `_count` (and `_offset`): whole numbers are clamped to the limit, never
    /// taken as they are; anything else is refused naming the parameter.
    #[test]
    fn count_is_clamped_or_refused(value in prop_oneof!["[0-9]{1,30}", " ?[0-9]{1,5} ?", "\\PC{0,8}", "-[0-9]{1,4}", "[0-9]{1,3}\\.[0-9]"], offset in any::<bool>()) {
        let key = if offset { "_offset" } else { "_count" };
        let r = parse_query(ResourceType::Patient, &pairs(&[(key, &value)]), true);
        let v = value.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            prop_assert!(matches!(&r, Err(i) if i.code == IssueCode::Value && i.expression.as_deref() == Some(key)), "{:?}", r);
            return Ok(());
        }
        let q = r.map_err(|e| TestCaseError::fail(format!("{value:?}: {e:?}")))?;
        let n: u128 = v.parse().unwrap_or(u128::MAX);
        let limit = if offset { OFFSET_MAX } else { COUNT_MAX };
        let want = n.min(limit as u128) as usize;
        if offset {
            prop_assert_eq!(q.offset, want);
            prop_assert_eq!(q.count, COUNT_DEFAULT);
        } else {
            prop_assert_eq!(q.count, want);
        }
    }

    /// Unknown parameters: refused under strict handling, and under lenient
    /// handling listed as ignored (never silently dropped), the rest applied.
    #[test]
    fn unknown_parameters_are_refused_or_reported(rtype in arb_type(), name in "_?[a-z][a-z-]{2,15}", strict in any::<bool>()) {
        prop_assume!(find_param(rtype, &name).is_none());
        prop_assume!(!matches!(name.as_str(), "_count" | "_offset" | "_sort" | "_include" | "_revinclude" | "_summary" | "_total" | "_elements" | "_format" | "_pretty" | "_has"));
        let ps = pairs(&[(&name, "x"), ("_id", "abc")]);
        let r = parse_query(rtype, &ps, strict);
        if strict {
            prop_assert!(matches!(&r, Err(i) if i.code == IssueCode::NotSupported && i.expression.as_deref() == Some(name.as_str())), "{:?}", r);
        } else {
            let q = r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(&q.ignored_keys, &vec![name.clone()]);
            prop_assert_eq!(q.ignored.len(), 1);
            prop_assert!(q.ignored[0].contains(&name), "{:?}", q.ignored);
            prop_assert_eq!(q.clauses.len(), 1);
            prop_assert_eq!(q.clauses[0].param, "_id");
        }
    }

    /// `_sort`: the keys, their order and directions are the generated ones;
    /// a parameter that is not sortable is refused.
    #[test]
    fn sort_keys_are_the_generated_ones(keys in prop::collection::vec((prop::sample::select(vec!["name", "family", "birthdate", "gender", "identifier", "_lastUpdated", "_id", "general-practitioner", "nope", "_count"]), any::<bool>()), 1..6)) {
        let value = keys.iter().map(|(k, d)| format!("{}{k}", if *d { "-" } else { "" })).collect::<Vec<_>>().join(",");
        let r = parse_query(ResourceType::Patient, &pairs(&[("_sort", &value)]), false);
        if keys.iter().any(|(k, _)| matches!(*k, "nope" | "_count")) {
            prop_assert!(matches!(&r, Err(i) if i.expression.as_deref() == Some("_sort")), "{:?}", r);
            return Ok(());
        }
        let q = r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let mut want: Vec<SortKey> = Vec::new();
        for (k, d) in &keys {
            if !want.iter().any(|s| s.param == *k) {
                let def = find_param(ResourceType::Patient, k).unwrap();
                want.push(SortKey { param: def.name, kind: def.kind, descending: *d });
            }
        }
        prop_assert_eq!(q.sort, want);
    }

    /// `_include=Source:param[:Target]`: the include is the generated one.
    #[test]
    fn includes_are_the_generated_ones(target in prop::option::of(prop::sample::select(vec!["Organization", "Practitioner", "PractitionerRole", "Patient"])), rev in any::<bool>()) {
        let (rtype, source, param) = if rev {
            (ResourceType::Practitioner, ResourceType::Patient, "general-practitioner")
        } else {
            (ResourceType::Patient, ResourceType::Patient, "general-practitioner")
        };
        let value = match target { Some(t) => format!("{source}:{param}:{t}"), None => format!("{source}:{param}") };
        let key = if rev { "_revinclude" } else { "_include" };
        let r = parse_query(rtype, &pairs(&[(key, &value)]), true);
        if target == Some("Patient") {
            // general-practitioner never points at a Patient.
            prop_assert!(matches!(&r, Err(i) if i.expression.as_deref() == Some(key)), "{:?}", r);
            return Ok(());
        }
        let q = r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let want = vec![Include { source, param, target: target.map(|t| t.parse().unwrap()) }];
        prop_assert_eq!(if rev { &q.revincludes } else { &q.includes }, &want);
    }

    /// A chain `subject:Patient.family=x`: a reference clause whose one
    /// alternative is the inner clause parsed for the target type.
    #[test]
    fn chains_carry_their_inner_clause(texts in prop::collection::vec("[a-zA-Z][a-zA-Z ]{0,10}", 1..4), typed in any::<bool>()) {
        let value = texts.join(",");
        let key = if typed { "subject:Patient.family" } else { "patient.family" };
        let q = parse_query(ResourceType::Observation, &pairs(&[(key, &value)]), true)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let c = only_clause(&q);
        prop_assert_eq!(c.param, if typed { "subject" } else { "patient" });
        prop_assert_eq!(c.alternatives.len(), 1);
        let Predicate::Chain { target, inner } = &c.alternatives[0] else {
            return Err(TestCaseError::fail(format!("not a chain: {c:?}")));
        };
        prop_assert_eq!(*target, ResourceType::Patient);
        prop_assert_eq!(inner.param, "family");
        let want: Vec<Predicate> = texts.iter().map(|t| Predicate::StrPrefix(normalise_string(t))).collect();
        prop_assert_eq!(&inner.alternatives, &want);
    }
}

/// Errors inside a chain name the whole chained key the client sent.
#[test]
fn chain_errors_name_the_chained_key() {
    for (rtype, key, value) in [
        (ResourceType::Observation, "subject:Patient.birthdate", "not-a-date"),
        (ResourceType::Observation, "patient.birthdate:exact", "2020"),
        (ResourceType::Patient, "_has:Observation:patient:date", "2020-13"),
    ] {
        let ps = pairs(&[(key, value)]);
        let r = parse_query(rtype, &ps, false);
        let Err(issue) = r else {
            panic!("{key}={value} accepted: {r:?}")
        };
        assert_eq!(issue.expression.as_deref(), Some(key), "{issue:?}");
    }
}

/// Regression: `_has` without `:Type:parameter:search` (`Patient?_has=x`)
/// panicked ("a chain has a dot"); it is a 400 naming the key.
#[test]
fn bare_has_is_refused() {
    for value in ["", "x", "Observation:patient:code"] {
        for strict in [false, true] {
            let r = parse_query(ResourceType::Patient, &pairs(&[("_has", value)]), strict);
            let Err(issue) = r else {
                panic!("_has={value} accepted: {r:?}")
            };
            assert_eq!(issue.code, IssueCode::Value, "{issue:?}");
            assert_eq!(issue.expression.as_deref(), Some("_has"), "{issue:?}");
        }
    }
}
