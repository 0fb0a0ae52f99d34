//! FHIR narrative XHTML rules (R4 "Narrative": txt-1 and the list of
//! permitted elements and attributes).
//!
//! A narrative is shown to clinicians in browsers, so it must not carry
//! active content: no `<script>`, no event-handler attributes, no
//! `javascript:` URLs, no elements outside FHIR's basic formatting set, and no
//! styles that load from elsewhere. The check is
//! a small tag scanner, not an XML parser: it refuses anything it does not
//! recognise rather than trying to understand it.

/// Elements the R4 specification permits in a narrative.
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "b",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// Attributes the R4 specification permits (plus `xmlns` and `xml:lang`).
const ATTRIBUTES: &[&str] = &[
    "abbr",
    "accesskey",
    "align",
    "alt",
    "axis",
    "bgcolor",
    "border",
    "cellhalign",
    "cellpadding",
    "cellspacing",
    "cellvalign",
    "char",
    "charoff",
    "charset",
    "cite",
    "class",
    "colspan",
    "compact",
    "coords",
    "dir",
    "frame",
    "headers",
    "height",
    "href",
    "hreflang",
    "hspace",
    "id",
    "lang",
    "longdesc",
    "name",
    "nowrap",
    "rel",
    "rev",
    "rowspan",
    "rules",
    "scope",
    "shape",
    "span",
    "src",
    "start",
    "style",
    "summary",
    "tabindex",
    "title",
    "type",
    "valign",
    "value",
    "vspace",
    "width",
    "xmlns",
    "xml:lang",
];

pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// Check a `Narrative.div`. The error says what is wrong, quoting the part.
pub fn check_div(div: &str) -> Result<(), String> {
    let s = div.trim();
    if !s.starts_with("<div") {
        return Err("the narrative must be one XHTML <div> element".into());
    }
    let mut i = 0;
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut text = false;
    while i < b.len() {
        if b[i] != b'<' {
            if !b[i].is_ascii_whitespace() {
                text = true;
            }
            if depth == 0 {
                return Err("the narrative must be one <div> element, with nothing after it".into());
            }
            i += 1;
            continue;
        }
        let rest = &s[i..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").ok_or("an XHTML comment is not closed")?;
            i += end + 3;
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            return Err(format!("{} is not allowed in a narrative", quote(rest, 12)));
        }
        let end = tag_end(rest).ok_or_else(|| format!("the tag {} is not closed", quote(rest, 24)))?;
        let tag = &rest[1..end];
        i += end + 1;
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim().to_ascii_lowercase();
            allowed_element(&name)?;
            depth = depth.checked_sub(1).ok_or("a closing tag has no opening tag")?;
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, attrs) = match tag.find(|c: char| c.is_ascii_whitespace()) {
            Some(k) => (&tag[..k], &tag[k..]),
            None => (tag, ""),
        };
        let name = name.to_ascii_lowercase();
        allowed_element(&name)?;
        if depth == 0 {
            if root_seen {
                return Err("the narrative must be one <div> element, with nothing after it".into());
            }
            root_seen = true;
            if name != "div" {
                return Err("the narrative must be one XHTML <div> element".into());
            }
        }
        let attrs = parse_attributes(attrs)?;
        if depth == 0 && !attrs.iter().any(|(n, v)| n == "xmlns" && v == XHTML_NS) {
            return Err(format!("the narrative <div> must declare xmlns=\"{XHTML_NS}\""));
        }
        for (n, v) in &attrs {
            check_attribute(&name, n, v)?;
        }
        if name == "img" {
            text = true; // an image is content
        }
        if !self_closing {
            depth += 1;
        }
    }
    if depth != 0 {
        return Err("the narrative's elements are not all closed".into());
    }
    // txt-2 ("some non-whitespace content") is not enforced: official R4
    // examples (EventDefinition-example) carry an empty div, and an empty
    // narrative is harmless; only active content is refused.
    let _ = text;
    Ok(())
}

fn allowed_element(name: &str) -> Result<(), String> {
    if ELEMENTS.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "<{name}> is not allowed in a narrative (only basic formatting elements; no scripts, forms, frames or styles sheets)"
        ))
    }
}

fn check_attribute(element: &str, name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("on") {
        return Err(format!(
            "the event attribute '{name}' on <{element}> is not allowed in a narrative"
        ));
    }
    if !ATTRIBUTES.contains(&lower.as_str()) {
        return Err(format!(
            "the attribute '{name}' on <{element}> is not allowed in a narrative"
        ));
    }
    let squashed: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    if matches!(lower.as_str(), "href" | "src" | "longdesc" | "cite") {
        for bad in ["javascript:", "vbscript:", "data:text/html"] {
            if squashed.starts_with(bad) {
                return Err(format!(
                    "a {bad} URL in '{name}' on <{element}> is not allowed in a narrative"
                ));
            }
        }
    }
    // An image may come from elsewhere (R4 allows it, and official examples link
    // to a PACS or to images beside the page); Hale's own pages do not load
    // remote images (their content security policy), so no tracking pixel fires
    // in a clinician's browser. Other schemes (file:, ftp:, ...) are refused.
    if lower == "src" {
        let scheme = squashed
            .split_once(':')
            .map(|(s, _)| s)
            .filter(|s| !s.contains(['/', '#', '?']));
        let ok = match scheme {
            None => true, // relative, or #id
            Some("http" | "https") => true,
            Some("data") => squashed.starts_with("data:image/"),
            Some(_) => false,
        };
        if !ok {
            return Err(format!(
                "<{element} src=\"{}\">: a narrative image must be contained (#id), inline (data:image/...), relative or an http(s) URL",
                value.chars().take(48).collect::<String>()
            ));
        }
    }
    if lower == "style" {
        // Inline images (`url(data:image/...)`, as the official examples use)
        // are fine; anything that loads from elsewhere or runs code is not.
        let remote_url = squashed.match_indices("url(").any(|(k, _)| {
            let arg = squashed[k + 4..].trim_start_matches(['"', '\'']);
            !arg.starts_with("data:image/")
        });
        if remote_url || squashed.contains("expression(") || squashed.contains("@import") {
            return Err(format!(
                "the style on <{element}> loads from elsewhere or runs code; not allowed in a narrative"
            ));
        }
    }
    Ok(())
}

/// The index of the `>` ending the tag at the start of `s`, skipping quoted values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

fn parse_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("the attribute {} has no value", quote(rest, 24)))?;
        let name = rest[..eq].trim();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err(format!("malformed attributes {}", quote(rest, 24)));
        }
        let after = rest[eq + 1..].trim_start();
        let q = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| format!("the value of '{name}' must be quoted"))?;
        let close = after[1..]
            .find(q)
            .ok_or_else(|| format!("the value of '{name}' is not closed"))?;
        out.push((name.to_string(), after[1..1 + close].to_string()));
        rest = after[close + 2..].trim_start();
    }
    Ok(out)
}

fn quote(s: &str, n: usize) -> String {
    let cut: String = s.chars().take(n).collect();
    format!("'{cut}{}'", if s.chars().count() > n { "…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(div: &str, expect: &str) {
        let got = match check_div(div) {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        assert!(
            got.contains(expect),
            "{div}\n  got: {got}\n  expected to contain: {expect}"
        );
    }

    #[test]
    fn narratives() {
        let ns = r#"xmlns="http://www.w3.org/1999/xhtml""#;
        check(&format!("<div {ns}><p>Seen in <b>clinic</b>.</p></div>"), "ok");
        check(&format!("<div {ns}>Smith, Ann<br/>DOB 1970</div>"), "ok");
        check(
            &format!("<div {ns}><!-- note --><img src=\"#pic\" alt=\"x\"/></div>"),
            "ok",
        );
        check(&format!("<div {ns}><a href=\"https://nhs.uk\">NHS</a></div>"), "ok");
        check(
            &format!("<div {ns}><script>alert(1)</script></div>"),
            "<script> is not allowed",
        );
        check(
            &format!("<div {ns}><p onclick=\"x()\">a</p></div>"),
            "event attribute 'onclick'",
        );
        check(
            &format!("<div {ns}><a href=\" JavaScript:alert(1)\">a</a></div>"),
            "javascript: URL",
        );
        check(
            &format!("<div {ns}><img src=\"https://pacs.example/t.gif\"/>x</div>"),
            "ok",
        );
        check(
            &format!("<div {ns}><img src=\"file:///etc/passwd\"/>x</div>"),
            "must be contained",
        );
        check(
            &format!("<div {ns}><iframe src=\"#x\"></iframe></div>"),
            "<iframe> is not allowed",
        );
        check(
            &format!("<div {ns}><p style=\"background:url(x)\">a</p></div>"),
            "loads from elsewhere",
        );
        check(&format!("<div {ns}>   </div>"), "ok");
        check("<div>text</div>", "must declare xmlns");
        check("<p>text</p>", "one XHTML <div>");
        check(&format!("<div {ns}>a</div><div {ns}>b</div>"), "nothing after it");
        check(&format!("<div {ns}><p>a</div>"), "not all closed");
        check(&format!("<div {ns}><?php x ?></div>"), "is not allowed");
        check(&format!("<div {ns}><p data-x=\"1\">a</p></div>"), "attribute 'data-x'");
    }
}
