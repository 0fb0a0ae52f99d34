//! Properties of the scope parser and of token handling on arbitrary input.

use hale_auth::{parse_scope, Fetch, OidcSettings, Op, Scopes, TokenError, Validator};
use proptest::prelude::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A provider that cannot be reached (these properties need no keys).
struct Unreachable;
impl Fetch for Unreachable {
    fn get<'a>(&'a self, url: &'a str) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move { Err(format!("{url}: unreachable")) })
    }
}

fn validator() -> Validator {
    let settings = OidcSettings {
        issuer: "https://idp.example".into(),
        audience: "https://hale.example/fhir".into(),
        jwks_uri: Some("https://idp.example/jwks".into()),
        refetch_cooldown_secs: 0,
        ..OidcSettings::default()
    };
    Validator::new(settings, Arc::new(Unreachable), None).expect("settings")
}

const ALL: [Op; 5] = [Op::Create, Op::Read, Op::Update, Op::Delete, Op::Search];

proptest! {
    /// Never panics; whatever parses prints back to a scope that parses the same.
    #[test]
    fn scope_parse_round_trips(s in "\\PC{0,40}") {
        if let Ok(scope) = parse_scope(&s) {
            let again = parse_scope(&scope.to_string()).expect("a printed scope parses");
            prop_assert_eq!(again, scope);
        }
    }

    /// v2 permissions: an in-order subset of cruds is granted exactly; any
    /// other letter string grants nothing (never a wider grant).
    #[test]
    fn permissions_are_exact(letters in "[cruds]{1,6}", ty in "(Patient|Observation|\\*)") {
        let scope = format!("user/{ty}.{letters}");
        let in_order = {
            let idx: Vec<usize> = letters.chars().map(|c| "cruds".find(c).unwrap()).collect();
            idx.windows(2).all(|w| w[0] < w[1])
        };
        let scopes = Scopes::parse(&scope);
        for op in ALL {
            let letter = match op { Op::Create => 'c', Op::Read => 'r', Op::Update => 'u', Op::Delete => 'd', Op::Search => 's' };
            let granted = scopes.decide("Patient", op) != hale_auth::Grant::Denied;
            let expect = in_order && letters.contains(letter) && (ty == "*" || ty == "Patient");
            prop_assert_eq!(granted, expect, "{} {:?}", scope, op);
        }
    }

    /// Arbitrary bearer strings are refused, without a panic.
    #[test]
    fn arbitrary_tokens_are_refused(t in "\\PC{0,200}") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(validator().validate(&t));
        prop_assert!(r.is_err());
    }

    /// Three base64url parts with arbitrary JSON-ish headers: refused, never
    /// accepted without a key.
    #[test]
    fn arbitrary_headers_are_refused(alg in "(none|None|HS256|RS256|ES256|[A-Za-z0-9]{0,8})", typ in "(at\\+jwt|JWT|[a-z+]{0,8})", kid in "[a-z0-9]{0,8}") {
        use base64_like::encode;
        let header = format!(r#"{{"alg":"{alg}","typ":"{typ}","kid":"{kid}"}}"#);
        let token = format!("{}.{}.{}", encode(header.as_bytes()), encode(br#"{"sub":"x","exp":99999999999}"#), encode(b"sig"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(validator().validate(&token));
        prop_assert!(r.is_err());
        if alg == "none" || alg == "HS256" {
            prop_assert!(matches!(r, Err(TokenError::Malformed(_)) | Err(TokenError::Algorithm(_))), "{:?}", r);
        }
    }
}

/// Base64url without padding, enough for building test tokens.
mod base64_like {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub fn encode(b: &[u8]) -> String {
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
