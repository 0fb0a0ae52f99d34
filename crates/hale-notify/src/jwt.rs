//! GOV.UK Notify's API keys and JSON Web Tokens, by hand.
//!
//! A Notify API key is `{key_name}-{service_id}-{secret_key}` where the last
//! two are UUIDs (the name may itself contain hyphens, so the UUIDs are taken
//! from the end). Each request carries `Authorization: Bearer <jwt>`: header
//! `{"typ":"JWT","alg":"HS256"}`, claims `{"iss": service_id, "iat": now in
//! epoch seconds}`, signed with HMAC-SHA256 keyed with the secret key's text.
//! Notify rejects a token whose `iat` is more than 30 seconds from its clock,
//! so a fresh token is made for every request.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of a UUID in its text form.
const UUID_LEN: usize = 36;

/// How far a token's `iat` may be from the verifier's clock (Notify's rule).
pub const IAT_TOLERANCE_SECS: i64 = 30;

fn is_uuid(s: &str) -> bool {
    s.len() == UUID_LEN
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A parsed Notify API key. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_name: String,
    /// The `iss` claim.
    pub service_id: String,
    secret_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("a Notify API key is {{key_name}}-{{service_id}}-{{secret_key}}, the last two UUIDs; this one {0}")]
    Malformed(&'static str),
}

impl ApiKey {
    /// Parses `{key_name}-{service_id}-{secret_key}`.
    pub fn parse(key: &str) -> Result<ApiKey, ApiKeyError> {
        let key = key.trim();
        if !key.is_ascii() {
            return Err(ApiKeyError::Malformed("has non-ASCII characters"));
        }
        // name + "-" + uuid + "-" + uuid
        if key.len() < 2 * UUID_LEN + 3 {
            return Err(ApiKeyError::Malformed("is too short"));
        }
        let secret = &key[key.len() - UUID_LEN..];
        let service = &key[key.len() - 2 * UUID_LEN - 1..key.len() - UUID_LEN - 1];
        let sep1 = &key[key.len() - UUID_LEN - 1..key.len() - UUID_LEN];
        let sep2 = &key[key.len() - 2 * UUID_LEN - 2..key.len() - 2 * UUID_LEN - 1];
        if sep1 != "-" || sep2 != "-" || !is_uuid(secret) || !is_uuid(service) {
            return Err(ApiKeyError::Malformed("does not end in two UUIDs"));
        }
        Ok(ApiKey {
            key_name: key[..key.len() - 2 * UUID_LEN - 2].to_string(),
            service_id: service.to_string(),
            secret_key: secret.to_string(),
        })
    }

    /// From parts (tests, or keys stored split).
    pub fn from_parts(key_name: &str, service_id: &str, secret_key: &str) -> Result<ApiKey, ApiKeyError> {
        ApiKey::parse(&format!("{key_name}-{service_id}-{secret_key}"))
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// A token issued at `iat_secs` (epoch seconds).
    pub fn token(&self, iat_secs: i64) -> String {
        token(&self.service_id, &self.secret_key, iat_secs)
    }
}

impl FromStr for ApiKey {
    type Err = ApiKeyError;
    fn from_str(s: &str) -> Result<ApiKey, ApiKeyError> {
        ApiKey::parse(s)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("key_name", &self.key_name)
            .field("service_id", &self.service_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-<redacted>", self.key_name, self.service_id)
    }
}

/// The claims Notify reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub iat: i64,
}

/// The fixed JOSE header, exactly as Notify's clients send it.
pub const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"HS256"}"#;

fn sign(secret: &str, signing_input: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// An HS256 token with claims `{"iss": iss, "iat": iat_secs}` signed with `secret`.
pub fn token(iss: &str, secret: &str, iat_secs: i64) -> String {
    let claims = serde_json::to_string(&Claims {
        iss: iss.to_string(),
        iat: iat_secs,
    })
    .expect("claims serialise");
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER_JSON),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = URL_SAFE_NO_PAD.encode(sign(secret, &signing_input));
    format!("{signing_input}.{signature}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT (three base64url parts)")]
    Malformed,
    #[error("the header is not HS256")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("claims: {0}")]
    Claims(String),
    #[error("iat {iat} is more than {IAT_TOLERANCE_SECS} s from now ({now})")]
    Clock { iat: i64, now: i64 },
}

/// Checks a token as Notify does: HS256 signature with `secret`, then `iat`
/// within [`IAT_TOLERANCE_SECS`] of `now_secs`. Returns the claims (the caller
/// checks `iss`). Used by the tests' Notify stand-in; a server may use it too.
pub fn verify(token: &str, secret: &str, now_secs: i64) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| JwtError::Malformed)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(JwtError::Algorithm);
    }
    let given = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{h}.{c}").as_bytes());
    mac.verify_slice(&given).map_err(|_| JwtError::Signature)?;
    let claims = URL_SAFE_NO_PAD.decode(c).map_err(|_| JwtError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&claims).map_err(|e| JwtError::Claims(e.to_string()))?;
    if (claims.iat - now_secs).abs() > IAT_TOLERANCE_SECS {
        return Err(JwtError::Clock {
            iat: claims.iat,
            now: now_secs,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "my_test_key-26785a09-ab16-4eb0-8407-a37497a57506-3d844edf-8d35-48ac-975b-e847b4f122b0";

    #[test]
    fn parses_the_documented_example() {
        let k = ApiKey::parse(KEY).unwrap();
        assert_eq!(k.key_name, "my_test_key");
        assert_eq!(k.service_id, "26785a09-ab16-4eb0-8407-a37497a57506");
        assert_eq!(k.secret_key(), "3d844edf-8d35-48ac-975b-e847b4f122b0");
        assert!(!format!("{k:?} {k}").contains("3d844edf"));
        // Names may contain hyphens.
        let k = ApiKey::parse(&KEY.replace("my_test_key", "hale-live-key")).unwrap();
        assert_eq!(k.key_name, "hale-live-key");
        for bad in [
            "",
            "short",
            &KEY[..KEY.len() - 1],
            &KEY.replace("3d844edf-", "3d844edfX"),
        ] {
            assert!(ApiKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_matches_rfc7519_hs256() {
        // Same inputs give the same token; it verifies; tampering does not.
        let k = ApiKey::parse(KEY).unwrap();
        let t = k.token(1_568_818_578);
        assert_eq!(t, k.token(1_568_818_578));
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap(),
            HEADER_JSON
        );
        assert_eq!(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap(),
            r#"{"iss":"26785a09-ab16-4eb0-8407-a37497a57506","iat":1568818578}"#
        );
        let c = verify(&t, k.secret_key(), 1_568_818_590).unwrap();
        assert_eq!(c.iss, k.service_id);
        assert_eq!(
            verify(&t, k.secret_key(), 1_568_818_578 + 31),
            Err(JwtError::Clock {
                iat: 1_568_818_578,
                now: 1_568_818_609
            })
        );
        assert_eq!(
            verify(&t, "00000000-0000-0000-0000-000000000000", 1_568_818_578),
            Err(JwtError::Signature)
        );
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(r#"{"iss":"x","iat":1}"#),
            parts[2]
        );
        assert_eq!(verify(&forged, k.secret_key(), 1), Err(JwtError::Signature));
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2.
        let mac = sign("Jefe", "what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
