//! One module per screen.

pub mod backfill;
pub mod book;
pub mod clinic;
pub mod find;
pub mod note;
pub mod oidc;
pub mod ops;
pub mod outage;
pub mod privacy;
pub mod record;
pub mod signin;

/// An error tied to a form field: shown in the error summary, linked to the field.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Percent-encode a value for a query string.
pub fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Render a template or a 500 page saying why not.
pub fn render<T: askama::Template>(t: &T) -> axum::response::Response {
    match t.render() {
        Ok(s) => crate::html(s),
        Err(e) => crate::plain_error_page(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            &format!("The page could not be drawn ({e}). Tell IT."),
        ),
    }
}
