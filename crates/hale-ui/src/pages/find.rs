//! Find a patient: one box. A valid NHS number opens the record at once;
//! otherwise name words and a date of birth search, results in a table.
//! The search is a POST, so NHS numbers stay out of URLs and history.

use super::{q, render, FieldError};
use crate::chrome::Chrome;
use crate::{check_post, read_form, signed_in, view, UiState};
use askama::Template;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// Rows shown for a name search.
pub const RESULTS_MAX: usize = 50;

pub struct Row {
    pub id: String,
    pub name: String,
    pub nhs: String,
    pub born: String,
    pub gender: String,
    pub address: String,
    pub pending: bool,
}

#[derive(Template)]
#[template(path = "find.html")]
struct Find {
    c: Chrome,
    error: Option<FieldError>,
    query: String,
    searched: bool,
    results: Vec<Row>,
    more: bool,
}

pub async fn page(State(ui): UiState, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    render(&Find {
        c: Chrome::new(&ui, &s, "Find a patient", "find"),
        error: None,
        query: String::new(),
        searched: false,
        results: vec![],
        more: false,
    })
}

/// What the box holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Query {
    Nhs(String),
    /// Ten digits whose check digit is wrong.
    BadNhs,
    Name {
        words: Vec<String>,
        birthdate: Option<String>,
    },
    Empty,
    /// A date alone, or something unreadable.
    Unclear(String),
}

/// Read the search box: an NHS number, or name words with an optional date
/// of birth (`14/07/1945`, `14-07-1945`, `14.07.1945` or `1945-07-14`).
pub fn parse_query(s: &str) -> Query {
    let s = s.trim();
    if s.is_empty() {
        return Query::Empty;
    }
    if let Some(n) = view::parse_nhs_number(s) {
        return Query::Nhs(n);
    }
    let digits: String = s.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Query::BadNhs;
    }
    let mut words = Vec::new();
    let mut birthdate = None;
    for tok in s.split(|c: char| c.is_whitespace() || c == ',') {
        if tok.is_empty() {
            continue;
        }
        if let Some(d) = parse_date(tok) {
            birthdate = Some(d);
        } else if tok.chars().any(|c| c.is_ascii_digit()) {
            return Query::Unclear(format!("'{tok}' is not a date of birth; write it as 14/07/1945"));
        } else {
            words.push(tok.to_string());
        }
    }
    if words.is_empty() {
        return Query::Unclear("Enter a name with the date of birth, or an NHS number".into());
    }
    Query::Name { words, birthdate }
}

fn parse_date(tok: &str) -> Option<String> {
    for f in ["%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%Y-%m-%d"] {
        if let Ok(d) = chrono::NaiveDate::parse_from_str(tok, f) {
            return Some(d.format("%Y-%m-%d").to_string());
        }
    }
    None
}

pub async fn submit(State(ui): UiState, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let query = form.text("q");
    let fhir = s.client(&ui);
    let mut page = Find {
        c: Chrome::new(&ui, &s, "Find a patient", "find"),
        error: None,
        query: query.clone(),
        searched: false,
        results: vec![],
        more: false,
    };
    let url = match parse_query(&query) {
        Query::Empty => {
            page.error = Some(FieldError::new("q", "Enter an NHS number, or a name and date of birth"));
            None
        }
        Query::BadNhs => {
            page.error = Some(FieldError::new(
                "q",
                "That is not a valid NHS number: the check digit does not match. Check the 10 digits",
            ));
            None
        }
        Query::Unclear(m) => {
            page.error = Some(FieldError::new("q", m));
            None
        }
        Query::Nhs(n) => Some(format!(
            "/Patient?identifier={}&_count=2",
            q(&format!("{}|{n}", hale_fhir::codes::NHS_NUMBER_SYSTEM))
        )),
        Query::Name { words, birthdate } => {
            let mut u = format!("/Patient?_count={}&_sort=family,given", RESULTS_MAX + 1);
            for w in words {
                u.push_str(&format!("&name={}", q(&w)));
            }
            if let Some(d) = birthdate {
                u.push_str(&format!("&birthdate={d}"));
            }
            Some(u)
        }
    };
    if let Some(url) = url {
        let a = fhir.get(&url).await;
        if !a.ok() {
            page.error = Some(FieldError::new("q", format!("The search failed: {}", a.problem())));
        } else {
            let found = a.entries();
            // An NHS number that matches one patient opens the record: 0 clicks.
            if matches!(parse_query(&query), Query::Nhs(_)) && found.len() == 1 {
                if let Some(id) = found[0]["id"].as_str() {
                    return Redirect::to(&format!("/ui/patient/{id}")).into_response();
                }
            }
            page.searched = true;
            page.more = found.len() > RESULTS_MAX;
            let today = chrono::Utc::now().date_naive();
            page.results = found
                .iter()
                .take(RESULTS_MAX)
                .map(|p| Row {
                    id: p["id"].as_str().unwrap_or("").to_string(),
                    name: view::banner_name(p),
                    nhs: view::nhs_number(p)
                        .map(|n| view::nhs_334(&n))
                        .unwrap_or_else(|| "Not known".into()),
                    born: match p["birthDate"].as_str() {
                        Some(b) => match view::age(b, today) {
                            Some(a) => format!("{} ({a})", view::date(b)),
                            None => view::date(b),
                        },
                        None => "Not known".into(),
                    },
                    gender: view::gender(p),
                    address: view::address(p),
                    pending: view::is_pending(p),
                })
                .collect();
        }
    }
    if page.error.is_some() {
        page.c.title = "Error: Find a patient".into();
        let mut r = render(&page);
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }
    render(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Query) {
        assert_eq!(parse_query(input), expect, "{input:?}");
    }

    #[test]
    fn the_search_box() {
        check("943 476 5919", Query::Nhs("9434765919".into()));
        check(" 9434765919 ", Query::Nhs("9434765919".into()));
        check("9434765918", Query::BadNhs);
        check("", Query::Empty);
        check(
            "Smith, Jane 14/07/1945",
            Query::Name {
                words: vec!["Smith".into(), "Jane".into()],
                birthdate: Some("1945-07-14".into()),
            },
        );
        check(
            "smith 1945-07-14",
            Query::Name {
                words: vec!["smith".into()],
                birthdate: Some("1945-07-14".into()),
            },
        );
        check(
            "smith",
            Query::Name {
                words: vec!["smith".into()],
                birthdate: None,
            },
        );
        assert!(matches!(parse_query("14/07/1945"), Query::Unclear(_)));
        assert!(matches!(parse_query("smith 31/02/1945"), Query::Unclear(_)));
    }
}
