//! Search parameter tables, extraction and query parsing (implementation).
//!
//! The parameters are the official R4 SearchParameters, generated into
//! `generated/search_params.rs` by `tools/gen_fhir_defs.py`, plus Hale's own
//! few ([`HALE_PARAMS`]). Each parameter's FHIRPath expression is parsed once
//! ([`crate::fhirpath`]) and evaluated on every write to extract its index
//! values; a parameter whose expression is outside the supported subset, or
//! whose kind Hale does not index, is reported as not supported when searched,
//! never silently dropped.

use crate::date;
use crate::fhirpath::{self, Expr, Item};
use crate::outcome::{Issue, IssueCode};
use crate::resource_type::ResourceType;
use crate::schema::Schema;
use crate::search::*;
use serde_json::Value;
use std::sync::OnceLock;

#[rustfmt::skip]
#[path = "generated/search_params.rs"]
mod generated;

#[rustfmt::skip]
#[path = "generated/compartment_patient.rs"]
mod compartment;

/// Hale's own search parameters, on the extensions of its profiles (see
/// ARCHITECTURE.md, "Hale code systems"), and `Communication.about`, which R4
/// does not index but the outbox is found by.
static HALE_PARAMS: &[(ResourceType, SearchParamDef)] = &[
    (
        ResourceType::Appointment,
        SearchParamDef {
            name: "incident",
            kind: ParamKind::Reference,
            path: "Appointment.extension('https://hale.health/fhir/StructureDefinition/outage-incident').value",
            targets: &[ResourceType::Basic],
            components: &[],
            url: "https://hale.health/fhir/SearchParameter/Appointment-incident",
        },
    ),
    (
        ResourceType::Appointment,
        SearchParamDef {
            name: "rebooked-from",
            kind: ParamKind::Reference,
            path: "Appointment.extension('https://hale.health/fhir/StructureDefinition/rebooked-from').value",
            targets: &[ResourceType::Appointment],
            components: &[],
            url: "https://hale.health/fhir/SearchParameter/Appointment-rebooked-from",
        },
    ),
    (
        ResourceType::Communication,
        SearchParamDef {
            name: "about",
            kind: ParamKind::Reference,
            path: "Communication.about",
            targets: &[],
            components: &[],
            url: "https://hale.health/fhir/SearchParameter/Communication-about",
        },
    ),
    // R4 has no purpose-of-use search (R5 adds `purpose`); privacy officers
    // review emergency ("break the glass") access by it.
    (
        ResourceType::AuditEvent,
        SearchParamDef {
            name: "purpose",
            kind: ParamKind::Token,
            path: "AuditEvent.purposeOfEvent",
            targets: &[],
            components: &[],
            url: "https://hale.health/fhir/SearchParameter/AuditEvent-purpose",
        },
    ),
];

/// AuditEvents are audit rows, not stored resources, and are searched by these only.
const AUDIT_EVENT_PARAMS: &[&str] = &[
    "_id",
    "_lastUpdated",
    "patient",
    "agent",
    "date",
    "action",
    "outcome",
    "purpose",
];

/// One parameter ready to extract: its definition and parsed expressions.
struct Compiled {
    def: SearchParamDef,
    /// None when the parameter cannot be indexed (with the reason).
    expr: Result<Expr, String>,
    components: Vec<Expr>,
}

struct Tables {
    /// Per type (in `ResourceType::ALL` order): its own parameters, then Hale's.
    defs: Vec<Vec<SearchParamDef>>,
    compiled: Vec<Vec<Compiled>>,
    common: Vec<Compiled>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        assert_eq!(
            generated::BY_TYPE.len(),
            ResourceType::ALL.len(),
            "generated tables match the types"
        );
        let mut defs = Vec::new();
        let mut compiled = Vec::new();
        for (i, rt) in ResourceType::ALL.iter().enumerate() {
            let mut d: Vec<SearchParamDef> = generated::BY_TYPE[i].to_vec();
            d.extend(HALE_PARAMS.iter().filter(|(t, _)| t == rt).map(|(_, p)| *p));
            compiled.push(d.iter().map(|p| compile(*p, rt.as_str())).collect());
            defs.push(d);
        }
        let common = generated::COMMON.iter().map(|p| compile(*p, "Resource")).collect();
        Tables { defs, compiled, common }
    })
}

fn compile(def: SearchParamDef, root: &str) -> Compiled {
    let roots = [root, "Resource", "DomainResource"];
    let expr = match def.kind {
        ParamKind::Special => Err("special parameters (such as Location near) are not supported".to_string()),
        _ if def.path.is_empty() => Err(format!("'{}' has no FHIRPath expression to index", def.name)),
        ParamKind::Composite if def.components.len() != 2 => Err(format!(
            "composite parameters of {} components are not supported",
            def.components.len()
        )),
        _ => fhirpath::parse(def.path, &roots),
    };
    let mut components = Vec::new();
    let expr = expr.and_then(|e| {
        for c in def.components {
            components.push(fhirpath::parse(c.path, &roots).map_err(|err| format!("component {}: {err}", c.name))?);
        }
        Ok(e)
    });
    Compiled { def, expr, components }
}

fn index_of(rtype: ResourceType) -> usize {
    ResourceType::ALL
        .binary_search(&rtype)
        .expect("every type is in ResourceType::ALL")
}

pub(crate) fn params_for(rtype: ResourceType) -> &'static [SearchParamDef] {
    &tables().defs[index_of(rtype)]
}

pub(crate) fn common() -> &'static [SearchParamDef] {
    generated::COMMON
}

fn lookup(rtype: ResourceType, name: &str) -> Option<&'static Compiled> {
    let t = tables();
    t.compiled[index_of(rtype)]
        .iter()
        .chain(t.common.iter())
        .find(|c| c.def.name == name)
}

pub(crate) fn find(rtype: ResourceType, name: &str) -> Option<&'static SearchParamDef> {
    lookup(rtype, name).map(|c| &c.def)
}

pub(crate) fn supported(rtype: ResourceType, name: &str) -> bool {
    if rtype == ResourceType::AuditEvent {
        return AUDIT_EVENT_PARAMS.contains(&name);
    }
    matches!(name, "_id" | "_lastUpdated") || lookup(rtype, name).is_some_and(|c| c.expr.is_ok())
}

/// The patient compartment's parameters for `rtype` (empty: not in it).
pub(crate) fn patient_compartment(rtype: ResourceType) -> &'static [&'static str] {
    compartment::PATIENT_COMPARTMENT[index_of(rtype)]
}

// ---------------------------------------------------------------------------
// Extraction

pub(crate) fn extract(rtype: ResourceType, resource: &Value) -> Vec<IndexEntry> {
    let t = tables();
    let schema = Schema::get();
    let root = Item {
        value: resource,
        ty: schema.named(rtype.as_str()),
    };
    let mut out = Vec::new();
    for c in t.compiled[index_of(rtype)].iter().chain(t.common.iter()) {
        // `_id` and `_lastUpdated` are columns of the resource row.
        if matches!(c.def.name, "_id" | "_lastUpdated") {
            continue;
        }
        let Ok(expr) = &c.expr else { continue };
        let items = fhirpath::eval(expr, root, root);
        let mut push = |facet, value| {
            out.push(IndexEntry {
                param: c.def.name,
                facet,
                value,
            })
        };
        if c.def.kind == ParamKind::Composite {
            let (a, b) = (&c.def.components[0], &c.def.components[1]);
            for it in items {
                let mut first = Vec::new();
                let mut second = Vec::new();
                for x in fhirpath::eval(&c.components[0], root, it) {
                    values(a.kind, x, &mut |f, v| {
                        if f == Facet::Value {
                            first.push(v)
                        }
                    });
                }
                for x in fhirpath::eval(&c.components[1], root, it) {
                    values(b.kind, x, &mut |f, v| {
                        if f == Facet::Value {
                            second.push(v)
                        }
                    });
                }
                for x in &first {
                    for y in &second {
                        push(
                            Facet::Value,
                            IndexValue::Composite(Box::new(x.clone()), Box::new(y.clone())),
                        );
                    }
                }
            }
        } else {
            for it in items {
                values(c.def.kind, it, &mut push);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The index values one item gives a parameter of `kind`.
fn values(kind: ParamKind, it: Item<'_>, push: &mut impl FnMut(Facet, IndexValue)) {
    let v = it.value;
    let ty = it.type_name().unwrap_or("");
    // A value of the wrong JSON shape for its type (validation refuses it on
    // write; stored data from before a rule may still hold one) is not indexed.
    let complex = ty.starts_with(|c: char| c.is_ascii_uppercase());
    if !ty.is_empty() && complex != v.is_object() {
        return;
    }
    let text = |key: &str| v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let token = |system: Option<&str>, code: &str| IndexValue::Token {
        system: system.unwrap_or("").to_string(),
        code: code.to_string(),
    };
    let str_value = |s: &str| {
        let norm = normalise_string(s);
        (!norm.is_empty()).then(|| IndexValue::Str {
            norm,
            exact: s.trim().to_string(),
        })
    };
    match kind {
        ParamKind::Token => match (ty, v) {
            (_, Value::Bool(b)) => push(Facet::Value, token(None, if *b { "true" } else { "false" })),
            (_, Value::String(s)) if !s.is_empty() => push(Facet::Value, token(None, s)),
            ("CodeableConcept", _) => {
                for c in v.get("coding").and_then(Value::as_array).into_iter().flatten() {
                    coding(c, push);
                }
                if let Some(t) = text("text").and_then(str_value) {
                    push(Facet::Text, t);
                }
            }
            ("Coding", _) => coding(v, push),
            ("Identifier", _) => {
                if let Some(value) = text("value") {
                    let system = text("system");
                    let value = if system == Some(crate::codes::NHS_NUMBER_SYSTEM) {
                        crate::nhs::normalise(value)
                    } else {
                        value.to_string()
                    };
                    push(Facet::Value, token(system, &value));
                    for c in v
                        .get("type")
                        .and_then(|t| t.get("coding"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let (s, code) = (
                            c.get("system").and_then(Value::as_str),
                            c.get("code").and_then(Value::as_str),
                        );
                        if let Some(code) = code {
                            push(
                                Facet::OfType,
                                IndexValue::Token {
                                    system: format!("{}|{code}", s.unwrap_or("")),
                                    code: value.clone(),
                                },
                            );
                        }
                    }
                }
                if let Some(t) = v
                    .get("type")
                    .and_then(|t| t.get("text"))
                    .and_then(Value::as_str)
                    .and_then(str_value)
                {
                    push(Facet::Text, t);
                }
            }
            ("ContactPoint", _) => {
                if let Some(value) = text("value") {
                    let code = normalise_token(text("system").unwrap_or(""), value);
                    if !code.is_empty() {
                        push(Facet::Value, token(Some(text("use").unwrap_or("")), &code));
                    }
                }
            }
            (_, Value::Object(_)) => {
                // Quantity and other coded structures: system and code.
                if let Some(code) = text("code") {
                    push(Facet::Value, token(text("system"), code));
                } else if let Some(value) = text("value") {
                    push(Facet::Value, token(text("system"), value));
                }
            }
            _ => {}
        },
        ParamKind::String => match (ty, v) {
            (_, Value::String(s)) => {
                if let Some(x) = str_value(s) {
                    push(Facet::Value, x);
                }
            }
            ("HumanName", _) | ("Address", _) => {
                let parts: &[&str] = if ty == "HumanName" {
                    &["family", "given", "prefix", "suffix", "text"]
                } else {
                    &["line", "city", "district", "state", "postalCode", "country", "text"]
                };
                for key in parts {
                    match v.get(*key) {
                        Some(Value::String(s)) => str_value(s).into_iter().for_each(|x| push(Facet::Value, x)),
                        Some(Value::Array(a)) => a
                            .iter()
                            .filter_map(Value::as_str)
                            .filter_map(str_value)
                            .for_each(|x| push(Facet::Value, x)),
                        _ => {}
                    }
                }
            }
            _ => {}
        },
        ParamKind::Date => {
            let mut range = |r: Option<(i64, i64)>| {
                if let Some((start_ms, end_ms)) = r {
                    push(Facet::Value, IndexValue::Date { start_ms, end_ms });
                }
            };
            match (ty, v) {
                ("string", _) => {}
                (_, Value::String(s)) => range(date::parse_range_ms(s)),
                ("Timing", _) => {
                    for e in v.get("event").and_then(Value::as_array).into_iter().flatten() {
                        range(e.as_str().and_then(date::parse_range_ms));
                    }
                    if let Some(b) = v.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                        range(period_range(b));
                    }
                }
                (_, Value::Object(_)) => range(period_range(v)),
                _ => {}
            }
        }
        ParamKind::Reference => match v {
            // A canonical or uri element (a reference by URL); not free text.
            Value::String(s) if !matches!(ty, "string" | "markdown" | "code" | "id") => {
                // A relative canonical (`Library/x`) is a local reference too.
                match local_reference(s.split('|').next().unwrap_or(s)) {
                    Some((rtype, id)) => push(
                        Facet::Value,
                        IndexValue::Reference {
                            rtype: rtype.to_string(),
                            id: id.to_string(),
                        },
                    ),
                    None => push(Facet::Value, IndexValue::Uri(s.clone())),
                }
            }
            Value::Object(_) => {
                if let Some(r) = text("reference") {
                    if let Some((rtype, id)) = local_reference(r) {
                        push(
                            Facet::Value,
                            IndexValue::Reference {
                                rtype: rtype.to_string(),
                                id: id.to_string(),
                            },
                        );
                    } else if r.contains(':') {
                        push(Facet::Value, IndexValue::Uri(r.to_string()));
                    }
                }
                if let Some(i) = v.get("identifier") {
                    if let Some(value) = i.get("value").and_then(Value::as_str) {
                        push(Facet::Identifier, token(i.get("system").and_then(Value::as_str), value));
                    }
                }
            }
            _ => {}
        },
        ParamKind::Uri => {
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                push(Facet::Value, IndexValue::Uri(s.to_string()));
            }
        }
        ParamKind::Number => {
            if let Some(n) = v.as_f64() {
                push(Facet::Value, IndexValue::Number { lo: Num(n), hi: Num(n) });
            } else if let Some(n) = v.get("value").and_then(Value::as_f64) {
                push(Facet::Value, IndexValue::Number { lo: Num(n), hi: Num(n) });
            }
        }
        ParamKind::Quantity => {
            let unit = |q: &Value| -> (String, String) {
                let s = |k: &str| q.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let code = q.get("code").or_else(|| q.get("unit")).or_else(|| q.get("currency"));
                let system = if q.get("currency").is_some() && q.get("system").is_none() {
                    "urn:iso:std:iso:4217".to_string()
                } else {
                    s("system")
                };
                (system, code.and_then(Value::as_str).unwrap_or("").to_string())
            };
            if ty == "Range" {
                let low = v.get("low");
                let high = v.get("high");
                let n = |q: Option<&Value>| q.and_then(|q| q.get("value")).and_then(Value::as_f64);
                if n(low).is_some() || n(high).is_some() {
                    let (system, code) = unit(low.or(high).expect("one bound"));
                    push(
                        Facet::Value,
                        IndexValue::Quantity {
                            lo: Num(n(low).unwrap_or(f64::NEG_INFINITY)),
                            hi: Num(n(high).unwrap_or(f64::INFINITY)),
                            system,
                            code,
                        },
                    );
                }
            } else if let Some(n) = v.get("value").and_then(Value::as_f64) {
                let (system, code) = unit(v);
                push(
                    Facet::Value,
                    IndexValue::Quantity {
                        lo: Num(n),
                        hi: Num(n),
                        system,
                        code,
                    },
                );
            } else if let Some(n) = v.as_f64() {
                push(
                    Facet::Value,
                    IndexValue::Quantity {
                        lo: Num(n),
                        hi: Num(n),
                        system: String::new(),
                        code: String::new(),
                    },
                );
            }
        }
        ParamKind::Composite | ParamKind::Special => {}
    }
}

fn coding(c: &Value, push: &mut impl FnMut(Facet, IndexValue)) {
    let text = |key: &str| c.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(code) = text("code") {
        push(
            Facet::Value,
            IndexValue::Token {
                system: text("system").unwrap_or("").to_string(),
                code: code.to_string(),
            },
        );
    }
    if let Some(d) = text("display") {
        let norm = normalise_string(d);
        if !norm.is_empty() {
            push(
                Facet::Text,
                IndexValue::Str {
                    norm,
                    exact: d.to_string(),
                },
            );
        }
    }
}

/// A Period as an inclusive range: a missing start is open (`i64::MIN`), a
/// missing end is open (`i64::MAX`). Unparseable bounds make the Period unindexed.
fn period_range(p: &Value) -> Option<(i64, i64)> {
    let bound = |key: &str| match p.get(key).and_then(Value::as_str) {
        None => Some(None),
        Some(s) => date::parse_range_ms(s).map(Some),
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if start.is_none() && end.is_none() {
        return None;
    }
    Some((start.map_or(i64::MIN, |r| r.0), end.map_or(i64::MAX, |r| r.1)))
}

/// `Type/id` (optionally with `/_history/n`) as (type, id). Absolute URLs,
/// `urn:` references and contained `#x` references are not local: None.
pub(crate) fn local_reference(r: &str) -> Option<(&str, &str)> {
    if r.starts_with('#') || r.contains(':') {
        return None;
    }
    let r = strip_history(r);
    let (rtype, id) = r.split_once('/')?;
    (is_type_name(rtype) && is_id(id)).then_some((rtype, id))
}

fn strip_history(r: &str) -> &str {
    r.find("/_history/").map_or(r, |i| &r[..i])
}

fn is_type_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// The FHIR `id` format: 1..=64 of `[A-Za-z0-9-.]`.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Normalise a string for indexing and searching: surrounding whitespace
/// trimmed, inner runs of whitespace collapsed to one space, lower case, common
/// Latin accents and ligatures folded (é -> e, ß -> ss, æ -> ae, ł -> l, …) and
/// combining marks dropped.
pub(crate) fn normalise_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.trim().chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue; // combining diacritical marks
        }
        if space {
            out.push(' ');
            space = false;
        }
        match fold(c) {
            Some(f) => out.push_str(f),
            None => out.push(c),
        }
    }
    out
}

fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'ț' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// A phone number as indexed and searched: its digits only, keeping a leading `+`.
pub(crate) fn normalise_phone(s: &str) -> String {
    let s = s.trim();
    let plus = s.starts_with('+');
    let digits = s.chars().filter(char::is_ascii_digit);
    if plus {
        std::iter::once('+').chain(digits).collect()
    } else {
        digits.collect()
    }
}

/// Token codes of ContactPoints are normalised per system: phones to digits,
/// emails to trimmed lower case; other codes are kept as they are.
fn normalise_token(system: &str, code: &str) -> String {
    match system {
        "phone" => normalise_phone(code),
        "email" => code.trim().to_lowercase(),
        _ => code.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Query parsing

/// At most this many notes are kept in `SearchQuery::ignored` (plus one saying so).
const IGNORED_MAX: usize = 32;

/// Chains (`a.b.c`) and reverse chains (`_has`) nest at most this deep.
pub const CHAIN_DEPTH_MAX: usize = 2;

/// Result parameters accepted and ignored without a note.
const SILENTLY_IGNORED: &[&str] = &["_format", "_pretty"];

pub(crate) fn parse(rtype: ResourceType, pairs: &[(String, String)], strict: bool) -> Result<SearchQuery, Issue> {
    let mut q = SearchQuery {
        rtype,
        clauses: Vec::new(),
        count: COUNT_DEFAULT,
        offset: 0,
        sort: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        iterate: false,
        ignored: Vec::new(),
        ignored_keys: Vec::new(),
        compartment: None,
        summary: Summary::False,
        elements: Vec::new(),
        total: Total::Default,
    };
    let mut p = Parser {
        rtype,
        strict,
        ignored: Vec::new(),
        ignored_keys: Vec::new(),
    };
    for (key, value) in pairs {
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        match (name, modifier) {
            (n, _) if SILENTLY_IGNORED.contains(&n) => {}
            ("_count", None) => q.count = parse_number(key, value)?.min(COUNT_MAX),
            ("_offset", None) => q.offset = parse_number(key, value)?.min(OFFSET_MAX),
            ("_sort", None) => p.sort(key, value, &mut q.sort)?,
            ("_summary", None) => {
                q.summary = match value.as_str() {
                    "true" => Summary::True,
                    "false" => Summary::False,
                    "count" => Summary::Count,
                    "data" => Summary::Data,
                    "text" => Summary::Text,
                    _ => {
                        return Err(value_error(
                            key,
                            format!("_summary must be true, false, count, data or text, found '{value}'"),
                        ))
                    }
                }
            }
            ("_total", None) => {
                q.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => {
                        return Err(value_error(
                            key,
                            format!("_total must be none, estimate or accurate, found '{value}'"),
                        ))
                    }
                }
            }
            ("_elements", None) => {
                for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let e = e.strip_prefix(&format!("{rtype}.")).unwrap_or(e);
                    if !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(value_error(
                            key,
                            format!("_elements lists element names, such as name,birthDate; '{e}' is not one"),
                        ));
                    }
                    if !q.elements.iter().any(|x| x == e) {
                        q.elements.push(e.to_string());
                    }
                }
            }
            ("_include" | "_revinclude", None | Some("iterate")) => {
                if modifier == Some("iterate") {
                    q.iterate = true;
                }
                let rev = name == "_revinclude";
                for inc in p.include(key, value, rev, modifier == Some("iterate"))? {
                    let list = if rev { &mut q.revincludes } else { &mut q.includes };
                    if !list.contains(&inc) {
                        list.push(inc);
                    }
                }
            }
            _ if name == "_has" || key.contains('.') => {
                if let Some(clause) = p.chained(key, value, CHAIN_DEPTH_MAX)? {
                    if q.clauses.len() == CLAUSES_MAX {
                        return Err(Issue::error(
                            IssueCode::TooCostly,
                            format!("too many search criteria: at most {CLAUSES_MAX} are allowed"),
                        )
                        .at(key.as_str()));
                    }
                    q.clauses.push(clause);
                }
            }
            _ => {
                if let Some(clause) = p.clause(key, name, modifier, value)? {
                    if q.clauses.len() == CLAUSES_MAX {
                        return Err(Issue::error(
                            IssueCode::TooCostly,
                            format!("too many search criteria: at most {CLAUSES_MAX} are allowed"),
                        )
                        .at(key.as_str()));
                    }
                    q.clauses.push(clause);
                }
            }
        }
    }
    q.ignored = p.ignored;
    q.ignored_keys = p.ignored_keys;
    Ok(q)
}

struct Parser {
    rtype: ResourceType,
    strict: bool,
    ignored: Vec<String>,
    ignored_keys: Vec<String>,
}

fn value_error(key: &str, msg: String) -> Issue {
    Issue::error(IssueCode::Value, msg).at(key)
}

fn parse_number(key: &str, value: &str) -> Result<usize, Issue> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(value_error(
            key,
            format!("{key} must be a non-negative whole number, found '{value}'"),
        ));
    }
    // All digits: only overflow can fail, and a huge number is clamped anyway.
    Ok(v.parse::<usize>().unwrap_or(usize::MAX))
}

/// A modifier Hale does not support on a parameter: always an error, under any
/// handling, because ignoring it would widen the search.
fn bad_modifier(key: &str, modifier: &str, def: &SearchParamDef) -> Issue {
    Issue::error(
        IssueCode::NotSupported,
        format!(
            "modifier ':{modifier}' is not supported on {} parameter '{}'",
            def.kind.as_str(),
            def.name
        ),
    )
    .at(key)
}

impl Parser {
    /// Something we do not support: an error under strict handling, else a note.
    fn unsupported(&mut self, key: &str, note: String) -> Result<(), Issue> {
        if self.strict {
            return Err(Issue::error(IssueCode::NotSupported, note).at(key));
        }
        self.ignored_keys.push(key.to_string());
        self.note(note);
        Ok(())
    }

    /// Record a note in `ignored`, keeping at most [`IGNORED_MAX`] of them.
    fn note(&mut self, note: String) {
        match self.ignored.len() {
            n if n < IGNORED_MAX => self.ignored.push(note),
            IGNORED_MAX => self
                .ignored
                .push("further ignored parameters are not listed".to_string()),
            _ => {}
        }
    }

    fn sort(&mut self, key: &str, value: &str, out: &mut Vec<SortKey>) -> Result<(), Issue> {
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, descending) = match item.strip_prefix('-') {
                Some(n) => (n, true),
                None => (item, false),
            };
            let sortable = |d: &&SearchParamDef| {
                !matches!(d.kind, ParamKind::Composite | ParamKind::Special)
                    && supported(self.rtype, d.name)
                    && (self.rtype != ResourceType::AuditEvent || matches!(d.name, "_id" | "_lastUpdated" | "date"))
            };
            match find(self.rtype, name).filter(sortable) {
                Some(def) => {
                    if !out.iter().any(|k| k.param == def.name) {
                        out.push(SortKey {
                            param: def.name,
                            kind: def.kind,
                            descending,
                        });
                    }
                }
                None => {
                    return Err(Issue::error(
                        IssueCode::NotSupported,
                        format!(
                            "{} cannot be sorted by '{name}': it is not a searchable parameter of the type",
                            self.rtype
                        ),
                    )
                    .at(key))
                }
            }
        }
        Ok(())
    }

    /// `_include=Source:param[:Target]` (or `_revinclude`); `param` may be `*`
    /// for every reference parameter of the source.
    fn include(&mut self, key: &str, value: &str, rev: bool, iterate: bool) -> Result<Vec<Include>, Issue> {
        let mut parts = value.split(':');
        let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
            return Err(value_error(
                key,
                format!("{key} must be Source:parameter[:Target], found '{value}'"),
            ));
        };
        let target = parts.next();
        if parts.next().is_some() {
            return Err(value_error(
                key,
                format!("{key} must be Source:parameter[:Target], found '{value}'"),
            ));
        }
        let Ok(source_t) = source.parse::<ResourceType>() else {
            self.unsupported(key, format!("{key}={value}: '{source}' is not a resource type"))?;
            return Ok(Vec::new());
        };
        // An include starts from the searched type (or, with :iterate, from
        // what was included); a revinclude ends at the searched type.
        if !rev && !iterate && source_t != self.rtype {
            let note = format!(
                "{key}={value}: only includes from the searched type {} are supported without :iterate",
                self.rtype
            );
            self.unsupported(key, note)?;
            return Ok(Vec::new());
        }
        let target_t = match target {
            None => None,
            Some(t) => match t.parse::<ResourceType>() {
                Ok(t) => Some(t),
                Err(_) => {
                    self.unsupported(key, format!("{key}={value}: '{t}' is not a resource type"))?;
                    return Ok(Vec::new());
                }
            },
        };
        let defs: Vec<&'static SearchParamDef> = if param == "*" {
            params_for(source_t)
                .iter()
                .filter(|d| d.kind == ParamKind::Reference)
                .collect()
        } else {
            match find(source_t, param).filter(|d| d.kind == ParamKind::Reference) {
                Some(d) => vec![d],
                None => {
                    let note = format!("{key}={value}: '{param}' is not a reference parameter of {source}");
                    self.unsupported(key, note)?;
                    return Ok(Vec::new());
                }
            }
        };
        let mut out = Vec::new();
        for def in defs {
            if let Some(t) = target_t {
                if !def.targets.is_empty() && !def.targets.contains(&t) {
                    if param != "*" {
                        self.unsupported(key, format!("{key}={value}: '{param}' does not refer to '{t}'"))?;
                    }
                    continue;
                }
            }
            if rev && !def.targets.is_empty() && !def.targets.contains(&self.rtype) {
                if param != "*" {
                    self.unsupported(
                        key,
                        format!("{key}={value}: {source}.{param} does not refer to {}", self.rtype),
                    )?;
                }
                continue;
            }
            out.push(Include {
                source: source_t,
                param: def.name,
                target: target_t,
            });
        }
        Ok(out)
    }

    /// A chained parameter (`subject:Patient.name=x`, up to two levels) or a
    /// reverse chain (`_has:Observation:patient:code=x`).
    fn chained(&mut self, key: &str, value: &str, depth: usize) -> Result<Option<Clause>, Issue> {
        if depth == 0 {
            return Err(Issue::error(
                IssueCode::TooCostly,
                format!("'{key}' chains too deep: at most {CHAIN_DEPTH_MAX} levels"),
            )
            .at(key));
        }
        if let Some(rest) = key.strip_prefix("_has:") {
            // _has:Source:param:rest
            let mut parts = rest.splitn(3, ':');
            let (Some(source), Some(param), Some(inner_key)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(value_error(key, format!("'{key}' must be _has:Type:parameter:search")));
            };
            let Ok(source_t) = source.parse::<ResourceType>() else {
                return Err(value_error(key, format!("_has: '{source}' is not a resource type")));
            };
            let Some(def) = find(source_t, param).filter(|d| d.kind == ParamKind::Reference) else {
                return Err(value_error(
                    key,
                    format!("_has: '{param}' is not a reference parameter of {source}"),
                ));
            };
            if !def.targets.is_empty() && !def.targets.contains(&self.rtype) {
                return Err(value_error(
                    key,
                    format!("_has: {source}.{param} does not refer to {}", self.rtype),
                ));
            }
            let mut inner = Parser {
                rtype: source_t,
                strict: true,
                ignored: Vec::new(),
                ignored_keys: Vec::new(),
            };
            // An error inside names the whole key the client sent.
            let Some(clause) = inner.any_clause(inner_key, value, depth - 1).map_err(|e| e.at(key))? else {
                return Ok(None);
            };
            return Ok(Some(Clause {
                param: "_has",
                kind: ParamKind::Special,
                facet: Facet::Value,
                missing: None,
                not: false,
                alternatives: vec![Predicate::Has {
                    source: source_t,
                    param: def.name,
                    inner: Box::new(clause),
                }],
            }));
        }
        // `_has` without `:Type:parameter:search` has no dot either.
        let Some((left, right)) = key.split_once('.') else {
            return Err(value_error(key, format!("'{key}' must be _has:Type:parameter:search")));
        };
        let (name, type_mod) = match left.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (left, None),
        };
        let Some(def) = find(self.rtype, name).filter(|d| d.kind == ParamKind::Reference) else {
            let note = format!(
                "chained parameter '{key}': '{name}' is not a reference parameter of {}",
                self.rtype
            );
            self.unsupported(key, note)?;
            return Ok(None);
        };
        let targets: Vec<ResourceType> = match type_mod {
            Some(t) => match t.parse::<ResourceType>() {
                Ok(t) if def.targets.is_empty() || def.targets.contains(&t) => vec![t],
                _ => return Err(value_error(key, format!("'{name}' does not refer to {t}"))),
            },
            None if def.targets.is_empty() => ResourceType::ALL.to_vec(),
            None => def.targets.to_vec(),
        };
        let inner_name = right.split([':', '.']).next().unwrap_or(right);
        let mut alternatives = Vec::new();
        for t in targets {
            if find(t, inner_name).is_none() {
                continue;
            }
            let mut inner = Parser {
                rtype: t,
                strict: true,
                ignored: Vec::new(),
                ignored_keys: Vec::new(),
            };
            if let Some(clause) = inner.any_clause(right, value, depth - 1).map_err(|e| e.at(key))? {
                alternatives.push(Predicate::Chain {
                    target: t,
                    inner: Box::new(clause),
                });
            }
        }
        if alternatives.is_empty() {
            let note =
                format!("chained parameter '{key}': no type that '{name}' refers to has a parameter '{inner_name}'");
            self.unsupported(key, note)?;
            return Ok(None);
        }
        Ok(Some(Clause {
            param: def.name,
            kind: ParamKind::Reference,
            facet: Facet::Value,
            missing: None,
            not: false,
            alternatives,
        }))
    }

    /// A plain or chained clause for `key`.
    fn any_clause(&mut self, key: &str, value: &str, depth: usize) -> Result<Option<Clause>, Issue> {
        if key.starts_with("_has:") || key.contains('.') {
            return self.chained(key, value, depth);
        }
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key, None),
        };
        self.clause(key, name, modifier, value)
    }

    fn clause(&mut self, key: &str, name: &str, modifier: Option<&str>, value: &str) -> Result<Option<Clause>, Issue> {
        let Some(def) = find(self.rtype, name) else {
            let note = if name.contains('.') {
                format!("chained parameter '{key}' is not supported")
            } else if name.starts_with('_') {
                format!("parameter '{key}' is not supported")
            } else {
                format!("unknown parameter '{key}' for {}", self.rtype)
            };
            self.unsupported(key, note)?;
            return Ok(None);
        };
        if !supported(self.rtype, def.name) {
            // A real parameter that cannot be applied: never ignore it, or the
            // search would silently widen.
            let why = lookup(self.rtype, def.name)
                .and_then(|c| c.expr.as_ref().err().cloned())
                .unwrap_or_else(|| format!("{} are searched by {} only", self.rtype, AUDIT_EVENT_PARAMS.join(", ")));
            return Err(Issue::error(
                IssueCode::NotSupported,
                format!(
                    "search parameter '{}' is not supported on {}: {why}",
                    def.name, self.rtype
                ),
            )
            .at(key));
        }
        let mut clause = Clause {
            param: def.name,
            kind: def.kind,
            facet: Facet::Value,
            missing: None,
            not: false,
            alternatives: Vec::new(),
        };
        if modifier == Some("missing") {
            clause.missing = Some(match value.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(value_error(
                        key,
                        format!("{key} must be 'true' or 'false', found '{value}'"),
                    ))
                }
            });
            return Ok(Some(clause));
        }
        let special_column = matches!(def.name, "_id" | "_lastUpdated");
        // What the modifier means for this kind of parameter; anything else is a 400.
        let mut mode = Mode::Default;
        let mut type_modifier = None;
        match (def.kind, modifier) {
            (_, None) => {}
            (ParamKind::String, Some("exact")) => mode = Mode::Exact,
            (ParamKind::String, Some("contains")) => mode = Mode::Contains,
            (ParamKind::Token, Some("not")) if !special_column => clause.not = true,
            (ParamKind::Token, Some("text")) if !special_column => {
                clause.facet = Facet::Text;
                mode = Mode::Text;
            }
            (ParamKind::Token, Some("of-type")) if !special_column => {
                clause.facet = Facet::OfType;
                mode = Mode::OfType;
            }
            (ParamKind::Reference, Some("identifier")) => {
                clause.facet = Facet::Identifier;
                clause.kind = ParamKind::Token;
            }
            (ParamKind::Reference, Some(m)) if is_type_name(m) => {
                match m
                    .parse::<ResourceType>()
                    .ok()
                    .filter(|t| def.targets.is_empty() || def.targets.contains(t))
                {
                    Some(t) => type_modifier = Some(t),
                    None => return Err(value_error(key, format!("'{}' does not refer to {m}", def.name))),
                }
            }
            (ParamKind::Uri, Some("below")) => mode = Mode::Below,
            (ParamKind::Uri, Some("above")) => mode = Mode::Above,
            (_, Some(m)) => return Err(bad_modifier(key, m, def)),
        }
        let pieces = split_unescaped(value, ',');
        if pieces.len() > ALTERNATIVES_MAX {
            return Err(Issue::error(
                IssueCode::TooCostly,
                format!("too many values for '{key}': at most {ALTERNATIVES_MAX} are allowed"),
            )
            .at(key));
        }
        for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
            let pred = match (clause.kind, mode) {
                (ParamKind::Token, _) if def.name == "_id" => Predicate::Token {
                    system: None,
                    code: Some(unescape(piece)),
                },
                (ParamKind::Token, Mode::Text) => {
                    let s = normalise_string(&unescape(piece));
                    if s.is_empty() {
                        continue;
                    }
                    Predicate::StrPrefix(s)
                }
                (ParamKind::Token, Mode::OfType) => of_type_predicate(key, piece)?,
                (ParamKind::Token, _) => token_predicate(key, piece, telecom_system(def.path))?,
                (ParamKind::String, _) => {
                    let raw = unescape(piece);
                    let s = normalise_string(&raw);
                    if s.is_empty() {
                        continue;
                    }
                    match mode {
                        Mode::Exact => Predicate::StrExact(raw),
                        Mode::Contains => Predicate::StrContains(s),
                        _ => Predicate::StrPrefix(s),
                    }
                }
                (ParamKind::Date, _) => date_predicate(key, &unescape(piece))?,
                (ParamKind::Reference, _) => {
                    let mut preds = reference_predicates(key, &unescape(piece), type_modifier)?;
                    let last = preds.pop().expect("at least one predicate");
                    clause.alternatives.extend(preds);
                    last
                }
                (ParamKind::Uri, Mode::Below) => Predicate::UriBelow(unescape(piece)),
                (ParamKind::Uri, Mode::Above) => Predicate::UriAbove(uri_prefixes(&unescape(piece))),
                (ParamKind::Uri, _) => Predicate::Uri(unescape(piece)),
                (ParamKind::Number, _) => {
                    let (op, value, lo, hi) = number_value(key, &unescape(piece))?;
                    Predicate::Number { op, value, lo, hi }
                }
                (ParamKind::Quantity, _) => quantity_predicate(key, piece)?,
                (ParamKind::Composite, _) => composite_predicate(key, piece, def)?,
                (ParamKind::Special, _) => unreachable!("special parameters are not supported"),
            };
            clause.alternatives.push(pred);
        }
        if clause.alternatives.is_empty() {
            self.ignored_keys.push(key.to_string());
            self.note(format!("parameter '{key}' has no value and was ignored"));
            return Ok(None);
        }
        Ok(Some(clause))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Default,
    Exact,
    Contains,
    Text,
    OfType,
    Below,
    Above,
}

/// The ContactPoint system a token parameter reads, if any (`phone`, `email`).
fn telecom_system(path: &str) -> Option<&'static str> {
    if path.contains("system='phone'") {
        Some("phone")
    } else if path.contains("system='email'") {
        Some("email")
    } else {
        None
    }
}

fn token_predicate(key: &str, piece: &str, telecom: Option<&str>) -> Result<Predicate, Issue> {
    let norm = |code: String| match telecom {
        Some(system) => normalise_token(system, &code),
        None => code,
    };
    let parts = split_unescaped(piece, '|');
    match parts.as_slice() {
        [code] => Ok(Predicate::Token {
            system: None,
            code: Some(norm(unescape(code))),
        }),
        [system, code] => {
            if system.is_empty() && code.is_empty() {
                return Err(value_error(key, format!("'{piece}' has neither a system nor a code")));
            }
            let mut code = (!code.is_empty()).then(|| norm(unescape(code)));
            if unescape(system) == crate::codes::NHS_NUMBER_SYSTEM {
                code = code.map(|c| crate::nhs::normalise(&c));
            }
            Ok(Predicate::Token {
                system: Some(unescape(system)),
                code,
            })
        }
        _ => Err(value_error(
            key,
            format!("'{piece}' is not a token: use system|code, |code, system| or code"),
        )),
    }
}

/// `:of-type=system|code|value`: an identifier of that type with that value.
fn of_type_predicate(key: &str, piece: &str) -> Result<Predicate, Issue> {
    let parts = split_unescaped(piece, '|');
    match parts.as_slice() {
        [system, code, value] if !code.is_empty() && !value.is_empty() => Ok(Predicate::Token {
            system: Some(format!("{}|{}", unescape(system), unescape(code))),
            code: Some(unescape(value)),
        }),
        _ => Err(value_error(
            key,
            format!("'{piece}' is not an :of-type value: use type-system|type-code|identifier-value"),
        )),
    }
}

/// A search value's comparison prefix (`eq` when there is none) and the rest;
/// None for letters that are not a prefix.
fn prefix(piece: &str) -> Option<(DateOp, &str)> {
    let op = match piece.get(..2) {
        Some(p) if piece.as_bytes()[0].is_ascii_alphabetic() => match p {
            "eq" => DateOp::Eq,
            "ne" => DateOp::Ne,
            "gt" => DateOp::Gt,
            "lt" => DateOp::Lt,
            "ge" => DateOp::Ge,
            "le" => DateOp::Le,
            "sa" => DateOp::Sa,
            "eb" => DateOp::Eb,
            "ap" => DateOp::Ap,
            _ => return None,
        },
        _ => return Some((DateOp::Eq, piece)),
    };
    Some((op, &piece[2..]))
}

/// A number search value with its prefix, and the range its precision implies.
fn number_value(key: &str, piece: &str) -> Result<(DateOp, Num, Num, Num), Issue> {
    let bad = || {
        value_error(
            key,
            format!("'{piece}' is not a number: use [prefix]number, such as 100, ge4.5 or 1e3"),
        )
    };
    let (op, rest) = prefix(piece).ok_or_else(bad)?;
    let value: f64 = rest.parse().map_err(|_| bad())?;
    if !value.is_finite() || rest.starts_with('+') || rest.contains(['i', 'I', 'n', 'N']) {
        return Err(bad());
    }
    // Precision: half a unit of the last digit given (`100` -> 0.5, `1.50` -> 0.005,
    // `1e2` -> 50).
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    let half = 0.5 * 10f64.powi(exp - decimals);
    let (lo, hi) = if op == DateOp::Ap {
        // "Approximately": within 10% of the value (at least the precision).
        let d = (value.abs() * 0.1).max(half);
        (value - d, value + d)
    } else {
        (value - half, value + half)
    };
    Ok((op, Num(value), Num(lo), Num(hi)))
}

/// `[prefix]number|system|code`, `[prefix]number||code` or `[prefix]number`.
fn quantity_predicate(key: &str, piece: &str) -> Result<Predicate, Issue> {
    let parts = split_unescaped(piece, '|');
    let (number, system, code) = match parts.as_slice() {
        [n] => (*n, None, None),
        [n, s, c] => (
            *n,
            (!s.is_empty()).then(|| unescape(s)),
            (!c.is_empty()).then(|| unescape(c)),
        ),
        _ => {
            return Err(value_error(
                key,
                format!("'{piece}' is not a quantity: use [prefix]number|system|code, such as lt5.4|http://unitsofmeasure.org|mg"),
            ))
        }
    };
    let (op, value, lo, hi) = number_value(key, &unescape(number))?;
    Ok(Predicate::Quantity {
        op,
        value,
        lo,
        hi,
        system,
        code,
    })
}

/// `a$b` for a two-part composite: each part parsed as its component's kind.
fn composite_predicate(key: &str, piece: &str, def: &SearchParamDef) -> Result<Predicate, Issue> {
    let parts = split_unescaped(piece, '$');
    let [a, b] = parts.as_slice() else {
        return Err(value_error(
            key,
            format!(
                "'{piece}' is not a value of the composite '{}': use first$second",
                def.name
            ),
        ));
    };
    let part = |c: &Component, v: &str| -> Result<Predicate, Issue> {
        Ok(match c.kind {
            ParamKind::Token => token_predicate(key, v, None)?,
            ParamKind::String => Predicate::StrPrefix(normalise_string(&unescape(v))),
            ParamKind::Date => date_predicate(key, &unescape(v))?,
            ParamKind::Quantity => quantity_predicate(key, v)?,
            ParamKind::Number => {
                let (op, value, lo, hi) = number_value(key, &unescape(v))?;
                Predicate::Number { op, value, lo, hi }
            }
            ParamKind::Uri => Predicate::Uri(unescape(v)),
            ParamKind::Reference => reference_predicate(key, &unescape(v), None)?,
            ParamKind::Composite | ParamKind::Special => {
                return Err(Issue::error(
                    IssueCode::NotSupported,
                    format!("component '{}' of '{}' cannot be searched", c.name, def.name),
                )
                .at(key))
            }
        })
    };
    Ok(Predicate::Composite(
        Box::new(part(&def.components[0], a)?),
        Box::new(part(&def.components[1], b)?),
    ))
}

/// Every URI that `uri` starts with at a `/` boundary, itself included, for `:above`.
fn uri_prefixes(uri: &str) -> Vec<String> {
    let mut out = vec![uri.to_string()];
    let mut s = uri;
    while let Some(i) = s.rfind('/') {
        s = &s[..i];
        if s.ends_with('/') || s.is_empty() {
            break;
        }
        out.push(s.to_string());
    }
    out
}

fn date_predicate(key: &str, piece: &str) -> Result<Predicate, Issue> {
    let (op, rest) = match prefix(piece) {
        Some((DateOp::Ap, _)) => {
            return Err(Issue::error(
                IssueCode::NotSupported,
                "the date prefix 'ap' (approximately) is not supported",
            )
            .at(key))
        }
        Some(x) => x,
        None => return Err(value_error(key, format!("'{piece}' is not a date search value"))),
    };
    let Some((start_ms, end_ms)) = date::parse_range_ms(rest) else {
        return Err(value_error(
            key,
            format!("'{piece}' is not a valid date: use [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.sss]][Z|±hh:mm]]]]"),
        ));
    };
    Ok(Predicate::Date { op, start_ms, end_ms })
}

/// `Type/id`, a bare `id`, or an absolute URL ending in `Type/id` (a version
/// suffix `/_history/n` is dropped); an absolute or canonical URL also matches
/// references and canonicals stored by that URL.
fn reference_predicates(key: &str, piece: &str, type_modifier: Option<ResourceType>) -> Result<Vec<Predicate>, Issue> {
    let is_url = piece.contains("://") || piece.starts_with("urn:");
    let mut out = Vec::new();
    if is_url {
        out.push(Predicate::Uri(piece.to_string()));
    }
    match reference_predicate(key, piece, type_modifier) {
        Ok(p) => out.push(p),
        Err(e) if !is_url => return Err(e),
        Err(_) => {}
    }
    Ok(out)
}

fn reference_predicate(key: &str, piece: &str, type_modifier: Option<ResourceType>) -> Result<Predicate, Issue> {
    let bad = || {
        value_error(
            key,
            format!("'{piece}' is not a reference: use Type/id, id, or a URL ending in Type/id"),
        )
    };
    let r = strip_history(piece);
    let (rtype, id) = match r.rsplit_once('/') {
        Some((head, id)) => {
            let t = head.rsplit('/').next().unwrap_or(head);
            if !is_type_name(t) {
                return Err(bad());
            }
            (Some(t.to_string()), id)
        }
        None => (None, r),
    };
    if !is_id(id) {
        return Err(bad());
    }
    let rtype = match (rtype, type_modifier) {
        (Some(t), Some(m)) if t != m.as_str() => {
            return Err(value_error(
                key,
                format!("'{piece}' is not a {m} reference, as the modifier :{m} requires"),
            ))
        }
        (t, m) => t.or_else(|| m.map(|m| m.as_str().to_string())),
    };
    Ok(Predicate::Reference {
        rtype,
        id: id.to_string(),
    })
}

/// Split on `sep` where it is not escaped with a backslash. Pieces keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Remove search escapes: `\,` `\|` `\$` `\\` become `,` `|` `$` `\`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
