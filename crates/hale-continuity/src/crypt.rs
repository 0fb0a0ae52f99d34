//! age encryption of pack files (binary age format, X25519 recipients), which
//! the `age` and `rage` command-line tools decrypt: `age -d -i key.txt f.age`.

use crate::render::Rendered;
use crate::{sha256_hex, ContinuityError, PackFile, Protection, RECIPIENTS_MAX};
use std::io::Write;
use std::str::FromStr;

/// One or more age X25519 recipients (`age1...` public keys). Cannot be empty.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| k.to_string())).finish()
    }
}

impl Recipients {
    /// Parse `age1...` public keys. Duplicates are dropped; an empty list,
    /// more than [`RECIPIENTS_MAX`], or a malformed key is an error.
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Recipients, ContinuityError> {
        if keys.is_empty() {
            return Err(ContinuityError::InvalidOption(
                "encryption needs at least one age recipient (age1...)".into(),
            ));
        }
        if keys.len() > RECIPIENTS_MAX {
            return Err(ContinuityError::LimitExceeded {
                what: "age recipients",
                limit: RECIPIENTS_MAX,
            });
        }
        let mut out: Vec<age::x25519::Recipient> = Vec::with_capacity(keys.len());
        for k in keys {
            let text = k.as_ref().trim();
            if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                // Never echo a secret key into an error message or a log.
                return Err(ContinuityError::InvalidRecipient {
                    recipient: "AGE-SECRET-KEY-… (redacted)".into(),
                    reason: "that is a private key; give its public key (`age-keygen -y key.txt` prints it)".into(),
                });
            }
            let r = age::x25519::Recipient::from_str(text).map_err(|reason| ContinuityError::InvalidRecipient {
                recipient: text.to_string(),
                reason: reason.to_string(),
            })?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        Ok(Recipients { keys: out })
    }

    /// The recipients as `age1...` strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_string()).collect()
    }

    /// Encrypt everything `input` yields into `output`, streaming (a backup
    /// of a large store never sits in memory whole). Returns `output`.
    pub fn encrypt_stream<R: std::io::Read, W: Write>(&self, input: &mut R, output: W) -> Result<W, ContinuityError> {
        let encryptor = age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| ContinuityError::Encrypt(e.to_string()))?;
        let mut w = encryptor
            .wrap_output(output)
            .map_err(|e| ContinuityError::Encrypt(e.to_string()))?;
        std::io::copy(input, &mut w)
            .and_then(|_| w.finish())
            .map_err(|e| ContinuityError::Encrypt(e.to_string()))
    }

    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, ContinuityError> {
        let encryptor = age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| ContinuityError::Encrypt(e.to_string()))?;
        // age adds a small header and 16 bytes per 64 KiB chunk.
        let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / 4096 + 512);
        let mut w = encryptor
            .wrap_output(&mut out)
            .map_err(|e| ContinuityError::Encrypt(e.to_string()))?;
        w.write_all(plaintext)
            .and_then(|()| w.finish().map(|_| ()))
            .map_err(|e| ContinuityError::Encrypt(e.to_string()))?;
        Ok(out)
    }
}

/// The file as written under `protection`.
pub(crate) fn protect(r: Rendered, protection: &Protection) -> Result<PackFile, ContinuityError> {
    let plaintext_sha256 = sha256_hex(&r.bytes);
    Ok(match protection {
        Protection::Age(recipients) => {
            let bytes = recipients.encrypt(&r.bytes)?;
            PackFile {
                name: format!("{}.age", r.name),
                sha256: sha256_hex(&bytes),
                plaintext_sha256,
                bytes,
                encrypted: true,
                contents: r.contents,
                pages: r.pages,
            }
        }
        Protection::InsecurePlaintext => PackFile {
            name: r.name.to_string(),
            sha256: plaintext_sha256.clone(),
            plaintext_sha256,
            bytes: r.bytes,
            encrypted: false,
            contents: r.contents,
            pages: r.pages,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trip_through_age() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let keys = [
            id.to_public().to_string(),
            other.to_public().to_string(),
            id.to_public().to_string(),
        ];
        let r = Recipients::parse(&keys).unwrap();
        assert_eq!(r.to_strings().len(), 2, "duplicates dropped");
        let ct = r.encrypt(b"clinic list").unwrap();
        assert!(ct.starts_with(b"age-encryption.org/v1\n"));
        for identity in [&id, &other] {
            let d = age::Decryptor::new(&ct[..]).unwrap();
            let mut pt = Vec::new();
            d.decrypt(std::iter::once(identity as &dyn age::Identity))
                .unwrap()
                .read_to_end(&mut pt)
                .unwrap();
            assert_eq!(pt, b"clinic list");
        }
    }

    #[test]
    fn bad_recipient_lists_are_refused() {
        let none: [&str; 0] = [];
        assert!(matches!(
            Recipients::parse(&none),
            Err(ContinuityError::InvalidOption(_))
        ));
        assert!(matches!(
            Recipients::parse(&["age1notakey"]),
            Err(ContinuityError::InvalidRecipient { .. })
        ));
        let secret = age::x25519::Identity::generate();
        let secret_text = {
            use age::secrecy::ExposeSecret;
            secret.to_string().expose_secret().to_string()
        };
        let err = Recipients::parse(std::slice::from_ref(&secret_text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("private key"), "{err}");
        assert!(
            !err.contains(&secret_text[15..]),
            "the secret key must not be echoed: {err}"
        );
    }
}
