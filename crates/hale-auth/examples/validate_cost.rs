//! What validating an access token costs: a full ES256 verification (signature
//! and claims) and a repeat of the same token served from the verified-token
//! cache, per token, on this machine.
//!
//!   cargo run --release -p hale-auth --example validate_cost [-- N]

use hale_auth::{Fetch, OidcSettings, Validator};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

struct Keys(Vec<u8>);
impl Fetch for Keys {
    fn get<'a>(&'a self, _url: &'a str) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    b.chunks(3)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
            (0..=c.len()).map(move |i| A[((n >> (18 - 6 * i)) & 63) as usize] as char)
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"{}","y":"{}"}}]}}"#,
        b64url(&raw[1..33]),
        b64url(&raw[33..65])
    );
    let settings = OidcSettings {
        issuer: "https://idp.example".into(),
        audience: "https://hale.example/fhir".into(),
        jwks_uri: Some("https://idp.example/jwks".into()),
        ..OidcSettings::default()
    };
    let v = Validator::new(settings, Arc::new(Keys(jwks.into_bytes())), None).unwrap();
    v.refresh(true).await.unwrap();
    let key = EncodingKey::from_ec_der(&kp.serialize_der());
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k1".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let claims = serde_json::json!({"iss": "https://idp.example", "aud": "https://hale.example/fhir",
                "sub": format!("user{i}"), "exp": exp, "scope": "user/*.rs", "hale_role": "clinician"});
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        })
        .collect();
    let t = Instant::now();
    for tok in &tokens {
        v.validate(tok).await.unwrap();
    }
    let full = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for tok in &tokens {
        v.validate(tok).await.unwrap();
    }
    let cached = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("ES256 access tokens, {n} distinct: full verification {full:.1} us/token; the same tokens again (cache) {cached:.2} us/token");
}
