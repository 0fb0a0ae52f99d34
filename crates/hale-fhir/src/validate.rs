//! R4 structural validation plus Hale's own profile rules.
//!
//! Why schema-driven: the structure of R4 (which elements exist on each type,
//! their JSON types, single vs array, required bindings, primitive formats) is
//! taken from the official HL7 FHIR R4 JSON Schema rather than written out by
//! hand, so there is one source of truth and no hand-copied element list to
//! drift from the standard. `tools/gen_fhir_schema_subset.py` cuts that schema
//! down to the definitions reachable from Hale's types and the result is
//! embedded at compile time (no IO at run time) and compiled once into sorted
//! property tables and precompiled regexes (see `schema.rs`).
//!
//! The JSON Schema is not the whole of R4, so a little is added by hand:
//! - required *primitive* (and choice) elements, which the schema's `required`
//!   lists omit (e.g. `Appointment.status`): [`crate::schema`]'s supplement table;
//! - FHIR JSON rules the schema cannot say: no `null`, no empty arrays, objects
//!   or strings; `_x` primitive-extension siblings; real calendar dates;
//! - NHS number check digits and Hale's Appointment profile.

use crate::codes;
use crate::nhs;
use crate::outcome::{Issue, IssueCode};
use crate::resource_type::ResourceType;
use crate::schema::{is_choice_of, Complex, Prop, Required, Schema, TypeDef, TypeId, Val};
use serde_json::{Map, Value};
use std::fmt::Write;

/// At most this many issues are reported for one resource; then validation stops
/// (a final warning says so).
pub const ISSUES_MAX: usize = 100;
/// Objects nested deeper than this are not descended into (reported as too costly).
pub const DEPTH_MAX: usize = 64;
/// Values quoted in diagnostics are cut to this many characters.
const QUOTE_CHARS_MAX: usize = 64;

/// Check a resource a client sent for create/update.
///
/// Checks, each reported as an [`Issue`] with a FHIRPath-style expression:
/// - it is a JSON object with a supported, client-writable `resourceType`
///   (equal to `expected` when given);
/// - R4 structure: element names, JSON types, cardinality (array vs single),
///   required elements (including required primitives such as `Appointment.status`),
///   primitive formats (regex patterns), and the required code bindings (`enum`);
/// - NHS numbers (`identifier.system` = https://fhir.nhs.uk/Id/nhs-number) pass modulus 11;
/// - Hale profile rules: an Appointment carries at most one category from
///   `codes::APPOINTMENT_CATEGORY_SYSTEM` in `serviceCategory` (any other
///   systems' codes too), and a `priority`, if any, in `0..=R4_PRIORITY_MAX`.
///
/// Returns the resource type on success; all problems found (up to a limit) on failure.
///
/// Also enforced: an Appointment has at least one participant whose actor is a
/// `Patient/<id>` reference; contained resources hold no `contained` of their own
/// (R4 invariant dom-2).
pub fn validate_resource(resource: &Value, expected: Option<ResourceType>) -> Result<ResourceType, Vec<Issue>> {
    let Value::Object(obj) = resource else {
        return Err(vec![Issue::error(
            IssueCode::Invalid,
            format!("a resource must be a JSON object, found {}", kind(resource)),
        )]);
    };
    let rtype = resource_type_of(obj, expected)?;
    if !rtype.client_writable() {
        return Err(vec![Issue::error(
            IssueCode::NotSupported,
            format!("{rtype} resources are written only by the server; clients may read and search them but not create or update them"),
        )
        .at("resourceType")]);
    }
    let schema = Schema::get();
    let mut w = Walker::new(schema, false);
    let id = schema.resource(rtype).expect("every Hale type is in the schema subset");
    w.path.push_str(rtype.as_str());
    w.resource(id, obj, 0);
    if rtype == ResourceType::Appointment {
        appointment_rules(obj, &mut w);
    }
    if rtype == ResourceType::Basic && is_incident(obj) {
        incident_rules(obj, &mut w);
    }
    w.finish().map(|()| rtype)
}

/// Check the outer structure of an incoming Bundle (type, entry, request, fullUrl)
/// without descending into `entry[].resource`, which the caller validates one by one
/// with [`validate_resource`].
///
/// Each `entry[].resource` (and `entry[].response.outcome`) must still be a JSON
/// object with a `resourceType` string.
pub fn validate_bundle_shell(bundle: &Value) -> Result<(), Vec<Issue>> {
    let Value::Object(obj) = bundle else {
        return Err(vec![Issue::error(
            IssueCode::Invalid,
            format!("a Bundle must be a JSON object, found {}", kind(bundle)),
        )]);
    };
    match obj.get("resourceType") {
        None => {
            return Err(vec![
                Issue::error(IssueCode::Required, "resourceType is required").at("resourceType")
            ])
        }
        Some(Value::String(s)) if s == "Bundle" => {}
        Some(other) => {
            return Err(vec![Issue::error(
                IssueCode::Invalid,
                format!("expected a Bundle, found resourceType {}", quote_value(other)),
            )
            .at("resourceType")])
        }
    }
    let schema = Schema::get();
    let mut w = Walker::new(schema, true);
    let id = schema.named("Bundle").expect("Bundle is in the schema subset");
    w.path.push_str("Bundle");
    w.resource(id, obj, 0);
    w.finish()
}

/// Structural check of `value` against any definition of the subset (used in
/// tests, e.g. to check the OperationOutcomes Hale emits).
#[cfg(test)]
pub(crate) fn check_structure(type_name: &str, value: &Value) -> Vec<Issue> {
    let schema = Schema::get();
    let mut w = Walker::new(schema, false);
    let id = schema.named(type_name).expect("known definition");
    w.path.push_str(type_name);
    match value {
        Value::Object(obj) => w.resource(id, obj, 0),
        other => w.single(id, other, 0),
    }
    w.issues
}

/// `resourceType` must be present, a Hale type, and the expected one.
fn resource_type_of(obj: &Map<String, Value>, expected: Option<ResourceType>) -> Result<ResourceType, Vec<Issue>> {
    let err = |code, msg: String| Err(vec![Issue::error(code, msg).at("resourceType")]);
    let name = match obj.get("resourceType") {
        None => return err(IssueCode::Required, "resourceType is required".into()),
        Some(Value::String(s)) => s,
        Some(other) => {
            return err(
                IssueCode::Structure,
                format!("resourceType must be a string, found {}", kind(other)),
            )
        }
    };
    let Ok(rtype) = name.parse::<ResourceType>() else {
        return err(
            IssueCode::NotSupported,
            format!("resource type {} is not supported by this server", quote(name)),
        );
    };
    match expected {
        Some(e) if e != rtype => err(
            IssueCode::Invalid,
            format!("resourceType '{rtype}' does not match the expected type '{e}'"),
        ),
        _ => Ok(rtype),
    }
}

struct Walker<'s> {
    schema: &'s Schema,
    issues: Vec<Issue>,
    /// FHIRPath of the node being checked, e.g. `Appointment.participant[1].status`.
    path: String,
    /// Reused buffer for the string form of numbers.
    scratch: String,
    truncated: bool,
    /// Bundle shell mode: resources inside are not descended into.
    shell: bool,
    /// How many resources deep we are (1 = the top resource, 2 = contained).
    resource_depth: usize,
}

impl<'s> Walker<'s> {
    fn new(schema: &'s Schema, shell: bool) -> Self {
        Walker {
            schema,
            issues: Vec::new(),
            path: String::with_capacity(128),
            scratch: String::new(),
            truncated: false,
            shell,
            resource_depth: 0,
        }
    }

    fn finish(mut self) -> Result<(), Vec<Issue>> {
        if self.issues.is_empty() {
            return Ok(());
        }
        if self.truncated {
            self.issues.push(Issue::warning(
                IssueCode::TooCostly,
                format!("validation stopped after {ISSUES_MAX} issues; further problems were not reported"),
            ));
        }
        Err(self.issues)
    }

    fn full(&self) -> bool {
        self.truncated
    }

    /// Record an issue at the current path.
    fn report(&mut self, code: IssueCode, msg: impl Into<String>) {
        self.report_at(code, msg, None);
    }

    /// Record an issue at the current path plus `.suffix`.
    fn report_at(&mut self, code: IssueCode, msg: impl Into<String>, suffix: Option<&str>) {
        let mut at = self.path.clone();
        if let Some(s) = suffix {
            at.push('.');
            at.push_str(s);
        }
        self.push(Issue::error(code, msg).at(at));
    }

    fn push(&mut self, issue: Issue) {
        if self.issues.len() >= ISSUES_MAX {
            self.truncated = true;
        } else {
            self.issues.push(issue);
        }
    }

    /// The current path without indices (`Appointment.participant.status`), for messages.
    fn element(&self) -> String {
        let mut out = String::with_capacity(self.path.len());
        let mut skipping = false;
        for c in self.path.chars() {
            match c {
                '[' => skipping = true,
                ']' => skipping = false,
                c if !skipping => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// A resource object (top level, contained, or the Bundle): its type is known.
    fn resource(&mut self, id: TypeId, obj: &Map<String, Value>, depth: usize) {
        self.resource_depth += 1;
        // Only a contained resource may not contain others: a Bundle entry's
        // resource is a resource in its own right.
        let is_contained = self.path.contains(".contained[");
        if self.resource_depth > 1 && is_contained && obj.contains_key("contained") {
            self.report_at(
                IssueCode::Invariant,
                "a contained resource must not contain resources of its own (dom-2)",
                Some("contained"),
            );
        }
        self.object(id, obj, depth);
        self.resource_depth -= 1;
    }

    /// A single (non-array) value of type `id`, at the current path.
    fn single(&mut self, id: TypeId, v: &Value, depth: usize) {
        let schema = self.schema;
        match &schema.types[usize::from(id)] {
            TypeDef::Primitive(p) => {
                if !p.json.matches(v) {
                    let msg = format!("expected {} ({}), found {}", p.json.describe(), p.name, kind(v));
                    return self.report(IssueCode::Structure, msg);
                }
                let text: &str = match v {
                    Value::String(s) => {
                        if s.is_empty() {
                            return self.report(
                                IssueCode::Value,
                                "empty strings are not allowed; omit the element instead",
                            );
                        }
                        s
                    }
                    Value::Number(n) => {
                        self.scratch.clear();
                        let _ = write!(self.scratch, "{n}");
                        &self.scratch
                    }
                    _ => return, // booleans: the type says it all
                };
                let Some(re) = p.pattern.map(|i| &schema.patterns[i]) else {
                    return;
                };
                if !re.is_match(text) {
                    let msg = format!("value {} is not a valid {}", quote(text), p.name);
                    return self.report(IssueCode::Value, msg);
                }
                if p.int32 && v.as_i64().and_then(|n| i32::try_from(n).ok()).is_none() {
                    let msg = format!("value {} is out of range for {} (32-bit)", quote(text), p.name);
                    return self.report(IssueCode::Value, msg);
                }
                if p.temporal && crate::date::parse_range_ms(text).is_none() {
                    let msg = format!("value {} is not a valid {}: no such calendar date", quote(text), p.name);
                    self.report(IssueCode::Value, msg);
                }
            }
            TypeDef::Complex(c) => match v {
                Value::Object(obj) => self.object(id, obj, depth),
                _ => {
                    // Backbone elements (`Appointment_Participant`) have no FHIR type name to show.
                    let msg = if c.name.contains('_') {
                        format!("expected an object, found {}", kind(v))
                    } else {
                        format!("expected an object ({}), found {}", c.name, kind(v))
                    };
                    self.report(IssueCode::Structure, msg);
                }
            },
            TypeDef::ResourceList => self.contained(v, depth),
        }
    }

    /// A value that must be one of Hale's resources, chosen by its `resourceType`.
    fn contained(&mut self, v: &Value, depth: usize) {
        let Value::Object(obj) = v else {
            return self.report(
                IssueCode::Structure,
                format!("expected a resource (object), found {}", kind(v)),
            );
        };
        let name = match obj.get("resourceType") {
            Some(Value::String(s)) => s,
            None => return self.report_at(IssueCode::Required, "resourceType is required", Some("resourceType")),
            Some(other) => {
                let msg = format!("resourceType must be a string, found {}", kind(other));
                return self.report_at(IssueCode::Structure, msg, Some("resourceType"));
            }
        };
        if self.shell {
            return; // the caller validates Bundle entries one by one
        }
        let found = match name.parse::<ResourceType>() {
            Ok(rt) => self.schema.resource(rt),
            // Never stored, but a valid contained resource (GuidanceResponse).
            Err(_) if name == "Parameters" => self.schema.named("Parameters"),
            Err(_) => None,
        };
        match found {
            Some(id) => self.resource(id, obj, depth),
            None => {
                let msg = format!("resource type {} is not supported by this server", quote(name));
                self.report_at(IssueCode::NotSupported, msg, Some("resourceType"));
            }
        }
    }

    /// An object of complex type `id` at the current path.
    fn object(&mut self, id: TypeId, obj: &Map<String, Value>, depth: usize) {
        let Some(ty) = self.schema.complex(id) else { return };
        if depth >= DEPTH_MAX {
            let msg = format!("elements nested more than {DEPTH_MAX} levels deep are not accepted");
            return self.report(IssueCode::TooCostly, msg);
        }
        if obj.is_empty() {
            return self.report(
                IssueCode::Structure,
                "empty objects are not allowed; omit the element instead",
            );
        }
        for (key, v) in obj {
            if self.full() {
                return;
            }
            let len = self.path.len();
            self.path.push('.');
            self.path.push_str(key);
            match ty.prop(key) {
                Some(prop) => self.property(prop, obj, key, v, depth),
                // The R4 schema omits the `_name` sibling of some primitives
                // (canonical elements such as StructureDefinition.baseDefinition);
                // it is the primitive's id and extensions, as for any other.
                None if key.len() > 1 && key.starts_with('_') && self.is_primitive_prop(ty, &key[1..]) => {
                    if let Some(element) = self.schema.named("Element") {
                        match v {
                            Value::Array(items) => {
                                for item in items.iter().filter(|i| !i.is_null()) {
                                    self.single(element, item, depth + 1);
                                }
                            }
                            v => self.single(element, v, depth + 1),
                        }
                    }
                }
                None => {
                    self.path.truncate(len);
                    let msg = format!("unknown element '{key}' in {}", self.element());
                    self.report_at(IssueCode::Structure, msg, Some(key));
                }
            }
            self.path.truncate(len);
        }
        self.required(ty, obj);
        if id == self.schema.identifier {
            self.nhs_number(obj);
        }
        match &*ty.name {
            "Period" => self.period(obj),
            "Narrative" => self.narrative(obj),
            _ => {}
        }
    }

    fn is_primitive_prop(&self, ty: &Complex, name: &str) -> bool {
        ty.prop(name).is_some_and(|p| match &p.value {
            Val::Type(t) => matches!(self.schema.types[usize::from(*t)], TypeDef::Primitive(_)),
            Val::Enum(_) | Val::Const(_) => true,
        })
    }

    /// per-1: a Period's start is not after its end.
    fn period(&mut self, obj: &Map<String, Value>) {
        let bound = |k: &str| obj.get(k).and_then(Value::as_str).and_then(crate::date::parse_range_ms);
        if let (Some(start), Some(end)) = (bound("start"), bound("end")) {
            if start.0 > end.1 {
                let msg = format!(
                    "the period starts after it ends ({} > {}) (per-1)",
                    obj["start"].as_str().unwrap_or(""),
                    obj["end"].as_str().unwrap_or("")
                );
                self.report_at(IssueCode::Invariant, msg, Some("start"));
            }
        }
    }

    /// The narrative's XHTML carries no active content (txt-1, txt-2).
    fn narrative(&mut self, obj: &Map<String, Value>) {
        if let Some(Value::String(div)) = obj.get("div") {
            if let Err(why) = crate::xhtml::check_div(div) {
                self.report_at(IssueCode::Invariant, why, Some("div"));
            }
        }
    }

    fn property(&mut self, prop: &Prop, obj: &Map<String, Value>, key: &str, v: &Value, depth: usize) {
        if !prop.array {
            return match v {
                Value::Null => self.report(IssueCode::Structure, "null is not allowed; omit the element instead"),
                Value::Array(_) => {
                    let msg = format!("expected a single value for {} (0..1), found an array", self.element());
                    self.report(IssueCode::Structure, msg)
                }
                _ => self.value(prop, v, depth),
            };
        }
        let items = match v {
            Value::Array(items) => items,
            Value::Null => return self.report(IssueCode::Structure, "null is not allowed; omit the element instead"),
            _ => {
                let msg = format!("expected an array for {} (0..*), found {}", self.element(), kind(v));
                return self.report(IssueCode::Structure, msg);
            }
        };
        if items.is_empty() {
            return if prop.required {
                let msg = format!("{} requires at least one element (1..*)", self.element());
                self.report(IssueCode::Required, msg)
            } else {
                self.report(
                    IssueCode::Structure,
                    "empty arrays are not allowed; omit the element instead",
                )
            };
        }
        let len = self.path.len();
        for (i, item) in items.iter().enumerate() {
            if self.full() {
                break;
            }
            let _ = write!(self.path, "[{i}]");
            if item.is_null() {
                // In a primitive array, `null` holds a place for a value given in the
                // `_x` sibling array (or vice versa); otherwise it is not allowed.
                if !sibling_has_item(obj, key, i) {
                    self.report(
                        IssueCode::Structure,
                        "null is not allowed here: no matching value in the primitive extension array",
                    );
                }
            } else {
                self.value(prop, item, depth);
            }
            self.path.truncate(len);
        }
    }

    /// One non-null value of `prop` (an array item or the single value).
    fn value(&mut self, prop: &Prop, v: &Value, depth: usize) {
        match &prop.value {
            Val::Type(id) => self.single(*id, v, depth + 1),
            Val::Enum(values) => match v {
                Value::String(s) if s.is_empty() => self.report(
                    IssueCode::Value,
                    "empty strings are not allowed; omit the element instead",
                ),
                Value::String(s) if values.iter().any(|x| **x == **s) => {}
                Value::String(s) => {
                    let msg = format!(
                        "value {} is not in the required value set for {}: {}",
                        quote(s),
                        self.element(),
                        values.join(" | ")
                    );
                    self.report(IssueCode::Value, msg);
                }
                other => self.report(
                    IssueCode::Structure,
                    format!("expected a string (code), found {}", kind(other)),
                ),
            },
            Val::Const(c) => {
                if v.as_str() != Some(c) {
                    let msg = format!("expected '{c}', found {}", quote_value(v));
                    self.report(IssueCode::Invalid, msg);
                }
            }
        }
    }

    fn required(&mut self, ty: &Complex, obj: &Map<String, Value>) {
        for r in &ty.required {
            let (present, name): (bool, &str) = match r {
                Required::Element(i) => {
                    let name = &*ty.props[*i].name;
                    (obj.contains_key(name) || has_primitive_extension(obj, name), name)
                }
                Required::Choice(prefix) => {
                    let present = obj.keys().any(|k| is_choice_of(k.trim_start_matches('_'), prefix));
                    (present, prefix)
                }
            };
            if !present {
                let choice = if matches!(r, Required::Choice(_)) { "[x]" } else { "" };
                let msg = format!("{}.{name}{choice} is required", self.element());
                self.report_at(IssueCode::Required, msg, Some(name));
            }
        }
    }

    /// An Identifier with the NHS number system must carry a valid NHS number.
    fn nhs_number(&mut self, obj: &Map<String, Value>) {
        if obj.get("system").and_then(Value::as_str) != Some(codes::NHS_NUMBER_SYSTEM) {
            return;
        }
        match obj.get("value") {
            Some(Value::String(s)) if !s.is_empty() && !nhs::is_valid(s) => {
                let msg = format!(
                    "{} is not a valid NHS number (ten digits with a modulus 11 check digit)",
                    quote(s)
                );
                self.report_at(IssueCode::Value, msg, Some("value"));
            }
            None if !obj.contains_key("_value") => {
                self.report_at(
                    IssueCode::Required,
                    "an NHS number identifier must have a value",
                    Some("value"),
                );
            }
            _ => {} // wrong JSON type or empty: reported by the structural check
        }
    }
}

/// Hale's profile rules for an Appointment (`codes.rs`).
fn appointment_rules(obj: &Map<String, Value>, w: &mut Walker) {
    let categories: Vec<&str> = codes::APPOINTMENT_CATEGORIES.iter().map(|(c, _)| *c).collect();
    let mut found = Vec::new();
    let concepts = obj
        .get("serviceCategory")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, concept) in concepts.iter().enumerate() {
        let codings = concept
            .get("coding")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (j, coding) in codings.iter().enumerate() {
            if coding.get("system").and_then(Value::as_str) == Some(codes::APPOINTMENT_CATEGORY_SYSTEM) {
                found.push((i, j, coding.get("code").and_then(Value::as_str)));
            }
        }
    }
    let base = "Appointment.serviceCategory";
    // Hale's own category is optional: appointments from other systems carry
    // their own codes (Hale derives the category from the clinic's Schedule, or
    // reports the appointment as uncategorised). When given, it must be one.
    match found.as_slice() {
        [] => {}
        [(i, j, code)] => {
            if !code.is_some_and(|c| categories.contains(&c)) {
                let shown = code.map_or_else(|| "no code".to_string(), quote);
                w.push(
                    Issue::error(
                        IssueCode::Value,
                        format!("{shown} is not a Hale appointment category: {}", categories.join(" | ")),
                    )
                    .at(format!("{base}[{i}].coding[{j}].code")),
                );
            }
        }
        more => w.push(
            Issue::error(
                IssueCode::Value,
                format!(
                    "an Appointment may carry at most one coding with system {} in serviceCategory, found {}",
                    codes::APPOINTMENT_CATEGORY_SYSTEM,
                    more.len()
                ),
            )
            .at(base),
        ),
    }

    // R4: 0 undefined, 1 highest, larger numbers lower; Hale's rules use 1-4
    // (1 most urgent, 4 routine) and treat anything else as routine.
    if let Some(n) = obj
        .get("priority")
        .and_then(Value::as_u64)
        .filter(|n| *n > codes::R4_PRIORITY_MAX)
    {
        w.push(
            Issue::error(
                IssueCode::Value,
                format!(
                    "priority {n} is outside 0..={} (0 undefined, 1 highest, larger numbers lower)",
                    codes::R4_PRIORITY_MAX
                ),
            )
            .at("Appointment.priority"),
        );
    }

    // The structural check already reports a missing or empty participant list.
    if let Some(parts) = obj
        .get("participant")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
    {
        let has_patient = parts.iter().any(|p| {
            p.get("actor")
                .and_then(|a| a.get("reference"))
                .and_then(Value::as_str)
                .is_some_and(is_patient_reference)
        });
        if !has_patient {
            w.push(
                Issue::error(
                    IssueCode::Required,
                    "an Appointment needs at least one participant whose actor is a Patient (reference 'Patient/<id>')",
                )
                .at("Appointment.participant"),
            );
        }
    }
}

/// Whether a Basic resource is an IT outage incident (`Basic.code` has the Hale incident coding).
pub fn is_incident(obj: &Map<String, Value>) -> bool {
    obj.get("code")
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("system").and_then(Value::as_str) == Some(codes::INCIDENT_TYPE_SYSTEM)
                && c.get("code").and_then(Value::as_str) == Some(codes::INCIDENT_IT_OUTAGE)
        })
}

/// The incident profile (see `codes::EXT_INCIDENT_*`): exactly one period with a start
/// (and an end not before it), exactly one status (`closed` needs the end), and sites,
/// services and the description as non-empty codes / text.
fn incident_rules(obj: &Map<String, Value>, w: &mut Walker) {
    let exts = obj
        .get("extension")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut periods = Vec::new();
    let mut statuses = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let at = format!("Basic.extension[{i}]");
        let text = |key: &str| e.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
        match e.get("url").and_then(Value::as_str) {
            Some(codes::EXT_INCIDENT_PERIOD) => periods.push((i, e.get("valuePeriod"))),
            Some(codes::EXT_INCIDENT_STATUS) => statuses.push((i, text("valueCode"))),
            Some(codes::EXT_INCIDENT_SITE) | Some(codes::EXT_INCIDENT_SERVICE) if text("valueCode").is_none() => w
                .push(
                    Issue::error(IssueCode::Required, "an affected site or service needs a valueCode")
                        .at(format!("{at}.valueCode")),
                ),
            Some(codes::EXT_INCIDENT_DESCRIPTION) if text("valueString").is_none() => w.push(
                Issue::error(IssueCode::Required, "an incident description needs a valueString")
                    .at(format!("{at}.valueString")),
            ),
            _ => {}
        }
    }
    let mut end_ms = None;
    match periods.as_slice() {
        [(i, period)] => {
            let at = format!("Basic.extension[{i}].valuePeriod");
            let bound = |k: &str| {
                period
                    .and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .and_then(crate::date::parse_range_ms)
            };
            end_ms = bound("end").map(|end| (*i, end));
            match bound("start") {
                None => w.push(
                    Issue::error(
                        IssueCode::Required,
                        "an incident period needs a start (when the outage began)",
                    )
                    .at(format!("{at}.start")),
                ),
                Some(start) => {
                    if end_ms.is_some_and(|(_, end)| end.1 < start.0) {
                        w.push(
                            Issue::error(IssueCode::Value, "the incident ends before it starts")
                                .at(format!("{at}.end")),
                        );
                    }
                }
            }
        }
        [] => w.push(
            Issue::error(
                IssueCode::Required,
                format!(
                    "an incident needs one extension {} with a valuePeriod (start, and end once it is over)",
                    codes::EXT_INCIDENT_PERIOD
                ),
            )
            .at("Basic.extension"),
        ),
        [_, (i, _), ..] => w.push(
            Issue::error(IssueCode::Value, "an incident has exactly one period").at(format!("Basic.extension[{i}]")),
        ),
    }
    match statuses.as_slice() {
        [(i, status)] => {
            let at = format!("Basic.extension[{i}].valueCode");
            match status {
                Some(s) if codes::INCIDENT_STATUSES.contains(s) => {
                    if let ("closed", None, [(p, _)]) = (*s, end_ms, periods.as_slice()) {
                        w.push(
                            Issue::error(IssueCode::Required, "a closed incident needs the end of its period")
                                .at(format!("Basic.extension[{p}].valuePeriod.end")),
                        );
                    }
                }
                other => w.push(
                    Issue::error(
                        IssueCode::Value,
                        format!(
                            "incident status {} is not one of {}",
                            other.map_or_else(|| "(none)".to_string(), quote),
                            codes::INCIDENT_STATUSES.join(" | ")
                        ),
                    )
                    .at(at),
                ),
            }
        }
        [] => w.push(
            Issue::error(
                IssueCode::Required,
                format!(
                    "an incident needs one extension {} with valueCode open or closed",
                    codes::EXT_INCIDENT_STATUS
                ),
            )
            .at("Basic.extension"),
        ),
        [_, (i, _), ..] => w.push(
            Issue::error(IssueCode::Value, "an incident has exactly one status").at(format!("Basic.extension[{i}]")),
        ),
    }
}

fn is_patient_reference(r: &str) -> bool {
    r.strip_prefix("Patient/").is_some_and(|id| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    })
}

/// `_name` carries the id/extensions of primitive `name` (or `name` of `_name`).
fn has_primitive_extension(obj: &Map<String, Value>, name: &str) -> bool {
    obj.keys().any(|k| k.strip_prefix('_') == Some(name))
}

/// Whether the parallel array of `key` (`_key`, or `key` for `_key`) has a
/// non-null item at `i`.
fn sibling_has_item(obj: &Map<String, Value>, key: &str, i: usize) -> bool {
    let sibling = match key.strip_prefix('_') {
        Some(base) => obj.get(base),
        None => obj
            .iter()
            .find(|(k, _)| k.strip_prefix('_') == Some(key))
            .map(|(_, v)| v),
    };
    sibling
        .and_then(Value::as_array)
        .and_then(|a| a.get(i))
        .is_some_and(|v| !v.is_null())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `'text'`, cut to a readable length.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((cut, _)) => format!("'{}…'", &s[..cut]),
        None => format!("'{s}'"),
    }
}

fn quote_value(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
