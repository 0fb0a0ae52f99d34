//! Errors: each says what happened and what to do about it.

/// Why a bench run could not produce a report.
///
/// Per-request failures during the timed phase (non-2xx statuses, timeouts,
/// dropped connections) are *not* errors: they are counted in the report.
/// These are the failures that make a run meaningless: bad options, no
/// server, rejected credentials, or setup (seeding) that the server refused.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid bench option: {message}")]
    InvalidOption { message: String },

    #[error("cannot use base URL `{url}`: {reason} — expected something like http://127.0.0.1:8080")]
    BadUrl { url: String, reason: String },

    #[error("cannot connect to {url}: {source} — is `hale serve` running?")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: the server at {url} answered {status} — pass a valid bearer token (--token)")]
    Unauthorized { url: String, what: String, status: u16 },

    #[error("{url}/metadata answered {status}, so this does not look like a FHIR server — is the base URL the FHIR base (e.g. http://127.0.0.1:8080)?")]
    NotFhir { url: String, status: u16 },

    #[error("{what}: the server answered {status}: {body} — check the server log")]
    UnexpectedStatus { what: String, status: u16, body: String },

    #[error("{what}: {message} — the server closed the connection; check it is still running")]
    Transport { what: String, message: String },

    #[error("{what}: no response within {timeout_s} s — the server may be overloaded or stuck; raise request_timeout_s or lower the connection count")]
    Timeout { what: String, timeout_s: u64 },

    #[error("{what}: {message} — this is a bug in hale-bench")]
    Internal { what: String, message: String },

    #[error("ran out of test-range NHS numbers (999 000 0000 – 999 999 9999) while {what} — use a fresh database or fewer patients")]
    NhsNumbersExhausted { what: String },
}
