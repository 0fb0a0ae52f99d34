//! The stylesheet and images, compiled into the binary, served under
//! content-tagged paths with `immutable` caching, gzip when the browser takes it.

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// NHS.UK frontend 10.6.1 (font faces removed) and Hale's rules, one file.
pub const CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ui.css"));
pub const CSS_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ui.css.gz"));
/// First 12 hex digits of the stylesheet's SHA-256: its URL changes with it.
pub const CSS_TAG: &str = env!("HALE_UI_CSS_TAG");

const IMAGES: &[(&str, &[u8])] = &[
    (
        "favicon.svg",
        include_bytes!("../vendor/nhsuk-frontend-10.6.1/images/favicon.svg"),
    ),
    (
        "nhsuk-icon-arrow-down.svg",
        include_bytes!("../vendor/nhsuk-frontend-10.6.1/images/nhsuk-icon-arrow-down.svg"),
    ),
    (
        "nhsuk-icon-arrow-up-down.svg",
        include_bytes!("../vendor/nhsuk-frontend-10.6.1/images/nhsuk-icon-arrow-up-down.svg"),
    ),
    (
        "nhsuk-icon-arrow-up.svg",
        include_bytes!("../vendor/nhsuk-frontend-10.6.1/images/nhsuk-icon-arrow-up.svg"),
    ),
    (
        "nhsuk-icon-cross.svg",
        include_bytes!("../vendor/nhsuk-frontend-10.6.1/images/nhsuk-icon-cross.svg"),
    ),
];

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn gzip_ok(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

pub async fn css(Path(tag): Path<String>, headers: HeaderMap) -> Response {
    if tag != CSS_TAG {
        return StatusCode::NOT_FOUND.into_response();
    }
    let base = [
        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
        (header::CACHE_CONTROL, IMMUTABLE),
        (header::VARY, "Accept-Encoding"),
    ];
    if gzip_ok(&headers) {
        (base, [(header::CONTENT_ENCODING, "gzip")], CSS_GZ).into_response()
    } else {
        (base, CSS).into_response()
    }
}

pub async fn image(Path(name): Path<String>) -> Response {
    match IMAGES.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
