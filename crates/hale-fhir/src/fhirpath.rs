//! The FHIRPath subset that the official R4 search parameter expressions use,
//! evaluated against FHIR JSON with element types taken from the R4 schema.
//!
//! Why a subset and not a FHIRPath engine: the 1,375 R4 search parameters use
//! a handful of forms (paths, `|`, `as`/`as()`/`ofType()`, `where(resolve() is
//! T)`, `where(field='x')`, `[n]`, `exists()`, one `and` and one `!=`), and
//! extraction runs on every write. A parsed expression is a small tree
//! evaluated over borrowed JSON, with no allocation per element beyond the
//! result list. An expression outside the subset fails to parse, and the
//! parameter is then reported as not supported rather than indexed wrongly.
//!
//! Types matter: `Observation.value as Quantity` must find `valueQuantity`, a
//! token parameter must know a `Coding` from an `Identifier`, and a date
//! parameter a `Period` from a `dateTime`. Each item carries its schema type.

use crate::schema::{Schema, TypeId, Val};
use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The resource itself (`Patient`, `Resource`, `DomainResource`).
    Root,
    /// The context item (a composite's component expressions start here).
    This,
    Field(Box<Expr>, String),
    Index(Box<Expr>, usize),
    Union(Vec<Expr>),
    /// `x as T`, `x.as(T)`, `x.ofType(T)`.
    As(Box<Expr>, String),
    Where(Box<Expr>, Cond),
    /// `x.extension('url')`.
    Extension(Box<Expr>, String),
    First(Box<Expr>),
    /// Boolean results (only `Patient.deceased.exists() and Patient.deceased != false`).
    Exists(Box<Expr>),
    NotEqualBool(Box<Expr>, bool),
    And(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `resolve() is T`: a Reference to a `T`.
    ResolveIs(String),
    /// `field = 'value'`.
    FieldEquals(String, String),
}

/// One element found by an expression: its JSON and, when known, its R4 type.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub value: &'a Value,
    pub ty: Option<TypeId>,
}

impl Item<'_> {
    /// The R4 type name (`CodeableConcept`, `dateTime`, `Patient_Contact`), if known.
    pub fn type_name(&self) -> Option<&'static str> {
        self.ty.map(|t| Schema::get().type_name(t))
    }
}

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

/// Parse an expression. `root_types` are the names that denote the resource
/// itself (its type, `Resource`, `DomainResource`).
pub fn parse(text: &str, root_types: &[&str]) -> Result<Expr, String> {
    let tokens = lex(text)?;
    let mut p = P {
        t: tokens,
        i: 0,
        roots: root_types,
    };
    let e = p.and_expr()?;
    if p.i != p.t.len() {
        return Err(format!("unexpected {:?} in '{text}'", p.t[p.i]));
    }
    Ok(e)
}

/// Evaluate `expr` with `resource` as the root and `context` as `$this`.
pub fn eval<'a>(expr: &Expr, resource: Item<'a>, context: Item<'a>) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    ev(expr, resource, context, &mut out);
    out
}

fn ev<'a>(e: &Expr, root: Item<'a>, this: Item<'a>, out: &mut Vec<Item<'a>>) {
    match e {
        Expr::Root => out.push(root),
        Expr::This => out.push(this),
        Expr::Field(inner, name) => {
            for it in eval(inner, root, this) {
                children(it, name, out);
            }
        }
        Expr::Index(inner, n) => {
            if let Some(it) = eval(inner, root, this).into_iter().nth(*n) {
                out.push(it);
            }
        }
        Expr::Union(parts) => {
            for p in parts {
                ev(p, root, this, out);
            }
        }
        Expr::As(inner, ty) => {
            out.extend(eval(inner, root, this).into_iter().filter(|it| is_a(it, ty)));
        }
        Expr::Where(inner, cond) => {
            out.extend(eval(inner, root, this).into_iter().filter(|it| holds(cond, it)));
        }
        Expr::Extension(inner, url) => {
            for it in eval(inner, root, this) {
                let mut exts = Vec::new();
                children(it, "extension", &mut exts);
                out.extend(
                    exts.into_iter()
                        .filter(|x| x.value.get("url").and_then(Value::as_str) == Some(url)),
                );
            }
        }
        Expr::First(inner) => out.extend(eval(inner, root, this).into_iter().next()),
        Expr::Exists(inner) => out.push(boolean(!eval(inner, root, this).is_empty())),
        Expr::NotEqualBool(inner, b) => {
            let items = eval(inner, root, this);
            // FHIRPath: an empty operand gives an empty result.
            if let [one] = items.as_slice() {
                out.push(boolean(one.value.as_bool() != Some(*b)));
            }
        }
        Expr::And(a, b) => {
            let truth = |e: &Expr| eval(e, root, this).first().and_then(|i| i.value.as_bool());
            match (truth(a), truth(b)) {
                (Some(x), Some(y)) => out.push(boolean(x && y)),
                (Some(false), _) | (_, Some(false)) => out.push(boolean(false)),
                _ => {}
            }
        }
    }
}

fn boolean(b: bool) -> Item<'static> {
    Item {
        value: if b { &TRUE } else { &FALSE },
        ty: Schema::get().named("boolean"),
    }
}

/// The items under `name` of `it`: the element itself, or the typed forms of a
/// choice element (`value` -> `valueQuantity`, ...). Arrays are flattened.
fn children<'a>(it: Item<'a>, name: &str, out: &mut Vec<Item<'a>>) {
    let Value::Object(obj) = it.value else { return };
    let schema = Schema::get();
    let complex = it.ty.and_then(|t| schema.complex_or_resource(t, it.value));
    let mut push = |v: &'a Value, ty: Option<TypeId>| match v {
        Value::Array(a) => out.extend(a.iter().map(|v| Item {
            value: v,
            ty: ty.and_then(|t| schema.resolve_resource(t, v)),
        })),
        v => out.push(Item {
            value: v,
            ty: ty.and_then(|t| schema.resolve_resource(t, v)),
        }),
    };
    if let Some(v) = obj.get(name) {
        let ty = complex.and_then(|c| c.prop(name)).and_then(|p| match &p.value {
            Val::Type(t) => Some(*t),
            Val::Enum(_) => schema.named("code"),
            Val::Const(_) => schema.named("string"),
        });
        push(v, ty);
        return;
    }
    // A choice element: every present `name<Type>` key.
    for (key, v) in obj {
        if crate::schema::is_choice_of(key, name) {
            let ty = match complex {
                Some(c) => match c.prop(key).map(|p| &p.value) {
                    Some(Val::Type(t)) => Some(*t),
                    _ => continue,
                },
                None => schema
                    .named(&key[name.len()..])
                    .or_else(|| schema.named(&lower_first(&key[name.len()..]))),
            };
            push(v, ty);
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `x is T` for the types the R4 expressions ask about.
fn is_a(it: &Item<'_>, ty: &str) -> bool {
    let Some(name) = it.type_name() else {
        return false;
    };
    name == ty
        || (ty == "Quantity"
            && matches!(
                name,
                "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity"
            ))
        || (ty == "string" && matches!(name, "markdown" | "id" | "code"))
        || (ty == "uri" && matches!(name, "url" | "canonical" | "oid" | "uuid"))
        || (ty == "Resource" || ty == "DomainResource") && it.value.get("resourceType").is_some()
}

fn holds(cond: &Cond, it: &Item<'_>) -> bool {
    match cond {
        Cond::ResolveIs(ty) => it
            .value
            .get("reference")
            .and_then(Value::as_str)
            .and_then(reference_type)
            .is_some_and(|t| t == ty),
        Cond::FieldEquals(field, value) => it.value.get(field).and_then(Value::as_str) == Some(value.as_str()),
    }
}

/// The resource type a reference names: `Type/id`, `Type/id/_history/n`, or
/// an absolute URL ending in one of those.
pub fn reference_type(r: &str) -> Option<&str> {
    let r = r.find("/_history/").map_or(r, |i| &r[..i]);
    let mut parts = r.rsplit('/');
    let _id = parts.next()?;
    let ty = parts.next()?;
    (ty.starts_with(|c: char| c.is_ascii_uppercase()) && ty.bytes().all(|b| b.is_ascii_alphabetic())).then_some(ty)
}

// ---------------------------------------------------------------- lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(usize),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'.' | b'(' | b')' | b'[' | b']' | b'|' | b'=' => {
                out.push(Tok::Sym(match c {
                    b'.' => ".",
                    b'(' => "(",
                    b')' => ")",
                    b'[' => "[",
                    b']' => "]",
                    b'|' => "|",
                    _ => "=",
                }));
                i += 1;
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Sym("!="));
                i += 2;
            }
            b'\'' => {
                let end = s[i + 1..]
                    .find('\'')
                    .ok_or_else(|| format!("unterminated string in '{s}'"))?;
                out.push(Tok::Str(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Num(
                    s[start..i].parse().map_err(|_| format!("bad number in '{s}'"))?,
                ));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Ident(s[start..i].to_string()));
            }
            _ => {
                return Err(format!(
                    "'{}' is outside the supported FHIRPath subset in '{s}'",
                    c as char
                ))
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- parsing

struct P<'r> {
    t: Vec<Tok>,
    i: usize,
    roots: &'r [&'r str],
}

impl P<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(x)) if x == w) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), String> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(format!("expected '{s}', found {:?}", self.peek()))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.t.get(self.i) {
            Some(Tok::Ident(s)) => {
                self.i += 1;
                Ok(s.clone())
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut e = self.union()?;
        while self.eat_word("and") {
            let r = self.union()?;
            e = Expr::And(Box::new(e), Box::new(r));
        }
        Ok(e)
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.compare()?];
        while self.eat_sym("|") {
            parts.push(self.compare()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Expr::Union(parts)
        })
    }

    fn compare(&mut self) -> Result<Expr, String> {
        let e = self.as_type()?;
        if self.eat_sym("!=") {
            return match self.ident()?.as_str() {
                "true" => Ok(Expr::NotEqualBool(Box::new(e), true)),
                "false" => Ok(Expr::NotEqualBool(Box::new(e), false)),
                other => Err(format!("'!= {other}' is outside the supported subset")),
            };
        }
        Ok(e)
    }

    fn as_type(&mut self) -> Result<Expr, String> {
        let e = self.postfix()?;
        if self.eat_word("as") {
            let ty = self.ident()?;
            return Ok(Expr::As(Box::new(e), ty));
        }
        Ok(e)
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat_sym(".") {
                let name = self.ident()?;
                if self.eat_sym("(") {
                    e = self.call(e, &name)?;
                } else {
                    e = Expr::Field(Box::new(e), name);
                }
            } else if self.eat_sym("[") {
                let n = match self.t.get(self.i) {
                    Some(Tok::Num(n)) => *n,
                    other => return Err(format!("expected an index, found {other:?}")),
                };
                self.i += 1;
                self.expect_sym("]")?;
                e = Expr::Index(Box::new(e), n);
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        if self.eat_sym("(") {
            let e = self.and_expr()?;
            self.expect_sym(")")?;
            return Ok(e);
        }
        let name = self.ident()?;
        if self.roots.contains(&name.as_str()) {
            return Ok(Expr::Root);
        }
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err(format!("the expression starts at '{name}', not at this resource"));
        }
        // A relative path (a composite's component).
        Ok(Expr::Field(Box::new(Expr::This), name))
    }

    /// A function call after `.name(`.
    fn call(&mut self, on: Expr, name: &str) -> Result<Expr, String> {
        let e = match name {
            "as" | "ofType" => Expr::As(Box::new(on), self.ident()?),
            "where" => {
                let cond = if self.eat_word("resolve") {
                    self.expect_sym("(")?;
                    self.expect_sym(")")?;
                    if !self.eat_word("is") {
                        return Err("expected 'resolve() is Type'".into());
                    }
                    Cond::ResolveIs(self.ident()?)
                } else {
                    let field = self.ident()?;
                    self.expect_sym("=")?;
                    match self.t.get(self.i) {
                        Some(Tok::Str(s)) => {
                            let s = s.clone();
                            self.i += 1;
                            Cond::FieldEquals(field, s)
                        }
                        other => return Err(format!("expected a string, found {other:?}")),
                    }
                };
                Expr::Where(Box::new(on), cond)
            }
            "extension" => match self.t.get(self.i) {
                Some(Tok::Str(s)) => {
                    let s = s.clone();
                    self.i += 1;
                    Expr::Extension(Box::new(on), s)
                }
                other => return Err(format!("expected an extension URL, found {other:?}")),
            },
            "exists" => Expr::Exists(Box::new(on)),
            "first" => Expr::First(Box::new(on)),
            other => return Err(format!("the function {other}() is outside the supported subset")),
        };
        self.expect_sym(")")?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, root: &str, resource: &Value) -> Vec<(Option<&'static str>, Value)> {
        let e = parse(expr, &[root, "Resource", "DomainResource"]).unwrap_or_else(|err| panic!("{expr}: {err}"));
        let ty = Schema::get().named(root);
        let item = Item { value: resource, ty };
        eval(&e, item, item)
            .into_iter()
            .map(|i| (i.type_name(), i.value.clone()))
            .collect()
    }

    #[test]
    fn paths_choices_and_filters() {
        let obs = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 1.5, "unit": "mg"},
            "effectivePeriod": {"start": "2020-01-01"}
        });
        let check = |expr: &str, expect: Vec<(Option<&str>, Value)>| {
            let got = values(expr, "Observation", &obs);
            let got: Vec<(Option<&str>, Value)> = got.into_iter().collect();
            assert_eq!(got, expect, "{expr}");
        };
        check("Observation.status", vec![(Some("code"), json!("final"))]);
        check("Observation.code", vec![(Some("CodeableConcept"), obs["code"].clone())]);
        check(
            "(Observation.value as Quantity)",
            vec![(Some("Quantity"), obs["valueQuantity"].clone())],
        );
        check(
            "Observation.value.as(Quantity)",
            vec![(Some("Quantity"), obs["valueQuantity"].clone())],
        );
        check("(Observation.value as CodeableConcept)", vec![]);
        check(
            "Observation.effective",
            vec![(Some("Period"), obs["effectivePeriod"].clone())],
        );
        check(
            "Observation.subject.where(resolve() is Patient)",
            vec![(Some("Reference"), obs["subject"].clone())],
        );
        check("Observation.subject.where(resolve() is Group)", vec![]);
        check("Observation.code.coding[0].code", vec![(Some("code"), json!("8480-6"))]);
        check("Resource.id", vec![]);
    }

    #[test]
    fn where_on_a_field_and_booleans() {
        let p = json!({
            "resourceType": "Patient",
            "telecom": [{"system": "phone", "value": "0141 1"}, {"system": "email", "value": "a@b"}],
            "deceasedDateTime": "2020-01-01"
        });
        assert_eq!(
            values("Patient.telecom.where(system='phone')", "Patient", &p)
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>(),
            vec![p["telecom"][0].clone()]
        );
        let deceased = "Patient.deceased.exists() and Patient.deceased != false";
        assert_eq!(values(deceased, "Patient", &p)[0].1, json!(true));
        assert_eq!(
            values(
                deceased,
                "Patient",
                &json!({"resourceType": "Patient", "deceasedBoolean": false})
            )[0]
            .1,
            json!(false)
        );
        assert_eq!(
            values(deceased, "Patient", &json!({"resourceType": "Patient"}))[0].1,
            json!(false)
        );
    }

    #[test]
    fn outside_the_subset_is_an_error() {
        for bad in [
            "Patient.name.select(given)",
            "%resource.id",
            "Patient.a + Patient.b",
            "Observation.x.where(y > 1)",
        ] {
            assert!(parse(bad, &["Patient", "Observation"]).is_err(), "{bad}");
        }
    }
}
