//! Search parameters: their definitions, how index values are extracted
//! from a resource, and how a FHIR query string is parsed into a
//! storage-neutral [`SearchQuery`].
//!
//! The store (hale-store) turns a `SearchQuery` into SQL over index rows
//! produced by [`extract_index`]; it never sees the query string.

use crate::outcome::Issue;
use crate::resource_type::ResourceType;
use serde_json::Value;

/// What kind of values a search parameter indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Token,
    String,
    Date,
    Reference,
}

impl ParamKind {
    /// The FHIR `SearchParamType` code (for the CapabilityStatement).
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::String => "string",
            ParamKind::Date => "date",
            ParamKind::Reference => "reference",
        }
    }
}

/// One search parameter Hale supports on a resource type.
#[derive(Debug, Clone, Copy)]
pub struct SearchParamDef {
    pub name: &'static str,
    pub kind: ParamKind,
    /// FHIRPath-ish description of where the values come from (documentation only).
    pub path: &'static str,
    /// For references: the resource types it may point to.
    pub targets: &'static [ResourceType],
}

/// A value pulled out of a resource for one search parameter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IndexValue {
    /// `system` is "" when the coding/identifier has no system.
    /// For ContactPoint (phone) the code is the number with spaces and punctuation removed.
    Token { system: String, code: String },
    /// Normalised: lower case, accents folded, surrounding whitespace trimmed.
    Str(String),
    /// Inclusive range of instants, milliseconds since the Unix epoch (UTC).
    Date { start_ms: i64, end_ms: i64 },
    /// A local reference `Type/id`.
    Reference { rtype: String, id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexEntry {
    pub param: &'static str,
    pub value: IndexValue,
}

/// Comparison prefix of a date search value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateOp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// One alternative of a search clause (alternatives are OR'd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    /// `system` None: any system; Some("") : no system; Some(s): that system.
    /// `code` None: any code in that system (`system|`).
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// Default string search: normalised prefix match.
    StrPrefix(String),
    /// `:exact`: the unnormalised value must match exactly... stored values are
    /// normalised, so exact compares the normalised form for equality.
    StrExact(String),
    /// `:contains`: normalised substring.
    StrContains(String),
    /// Inclusive parameter range [start_ms, end_ms].
    Date { op: DateOp, start_ms: i64, end_ms: i64 },
    /// `rtype` None when the value was a bare id.
    Reference { rtype: Option<String>, id: String },
}

/// All alternatives for one parameter occurrence. Clauses are AND'ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The parameter name. `_id`, `_lastUpdated` and `_tag` are clauses too;
    /// `_id` uses Token predicates with `system: None`, `_lastUpdated` uses Date.
    pub param: &'static str,
    pub kind: ParamKind,
    /// `:missing=true|false` modifier, when given (then `alternatives` is empty).
    pub missing: Option<bool>,
    pub alternatives: Vec<Predicate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// A date parameter of the type, or `_lastUpdated`, or `_id`.
    pub param: &'static str,
    pub descending: bool,
}

/// `_include=Source:param[:Target]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source: ResourceType,
    pub param: &'static str,
    pub target: Option<ResourceType>,
}

/// A parsed search, ready for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub rtype: ResourceType,
    pub clauses: Vec<Clause>,
    /// Page size after clamping to [`COUNT_MAX`]; default [`COUNT_DEFAULT`].
    pub count: usize,
    /// Offset of this page (from `_offset`), clamped to [`OFFSET_MAX`].
    pub offset: usize,
    pub sort: Vec<SortKey>,
    pub includes: Vec<Include>,
    /// Parameters that were not understood and were ignored (lenient handling).
    /// Each is a human-readable note such as "unknown parameter 'foo'".
    pub ignored: Vec<String>,
}

pub const COUNT_DEFAULT: usize = 50;
pub const COUNT_MAX: usize = 1000;
pub const OFFSET_MAX: usize = 100_000;
/// Limit on the number of alternatives in one clause and clauses in one query.
pub const ALTERNATIVES_MAX: usize = 100;
pub const CLAUSES_MAX: usize = 32;

/// Search parameters Hale supports on `rtype` (not counting `_id`,
/// `_lastUpdated`, `_tag`, which every type has).
pub fn search_params(rtype: ResourceType) -> &'static [SearchParamDef] {
    crate::search_defs::params_for(rtype)
}

/// Look up a parameter definition, including the common ones.
pub fn find_param(rtype: ResourceType, name: &str) -> Option<&'static SearchParamDef> {
    crate::search_defs::find(rtype, name)
}

/// Pull every index value out of a resource (including `_tag` from `meta.tag`).
/// Must be deterministic: same input, same output, in a stable order.
pub fn extract_index(rtype: ResourceType, resource: &Value) -> Vec<IndexEntry> {
    crate::search_defs::extract(rtype, resource)
}

/// Parse query pairs (already percent-decoded, in order) into a `SearchQuery`.
/// With `strict`, an unknown or unsupported parameter or modifier is an error
/// (`Prefer: handling=strict`); otherwise it is recorded in `ignored`.
/// Malformed values (a bad date, a bad `_count`) are errors either way.
pub fn parse_query(rtype: ResourceType, pairs: &[(String, String)], strict: bool) -> Result<SearchQuery, Issue> {
    crate::search_defs::parse(rtype, pairs, strict)
}

/// Normalise text the way [`IndexValue::Str`] values and string search values
/// are: trimmed, inner whitespace runs collapsed to one space, lower case,
/// common Latin accents and ligatures folded (`é` -> `e`, `ß` -> `ss`), and
/// combining marks dropped.
pub fn normalise_string(s: &str) -> String {
    crate::search_defs::normalise_string(s)
}

/// Normalise a phone number the way `phone` token codes are indexed and
/// searched: digits only, keeping a leading `+`.
pub fn normalise_phone(s: &str) -> String {
    crate::search_defs::normalise_phone(s)
}

/// A local reference `Type/id` (a `/_history/n` suffix is dropped) as
/// `(type, id)`, exactly as extraction reads `Reference.reference`. Absolute
/// URLs, `urn:` references and contained `#x` references give None.
pub fn parse_local_reference(reference: &str) -> Option<(&str, &str)> {
    crate::search_defs::local_reference(reference)
}
