//! Decryption side of age: the operator's identity file (`age-keygen`
//! output). Encryption is `hale_continuity::Recipients`, shared with the
//! downtime packs, so both are decryptable with the stock `age` tool.

use crate::{io, BackupError};
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// Write a new age X25519 identity to `path` (which must not exist), in the
/// format `age-keygen` writes, readable by its owner only; returns its public
/// key (the recipient to put in `[backup] recipients`).
pub fn generate_identity_file(path: &Path) -> Result<String, BackupError> {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    writeln!(
        f,
        "# created by hale backup keygen\n# public key: {public}\n{}",
        id.to_string().expose_secret()
    )
    .and_then(|()| f.sync_all())
    .map_err(io(path))?;
    Ok(public)
}

/// X25519 identities (`AGE-SECRET-KEY-1...` lines) read from a key file.
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
}

/// Identities in an age key file: one `AGE-SECRET-KEY-1...` per line, `#`
/// comments and blank lines ignored (the format `age-keygen` writes).
pub fn read_identities(path: &Path) -> Result<Identities, BackupError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = age::x25519::Identity::from_str(line).map_err(|_| {
            BackupError::Invalid(format!(
                "{} line {}: not an age X25519 secret key (expected AGE-SECRET-KEY-1..., as age-keygen writes)",
                path.display(),
                n + 1
            ))
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(BackupError::Invalid(format!(
            "{} holds no age secret key (AGE-SECRET-KEY-1...)",
            path.display()
        )));
    }
    Ok(Identities { keys })
}

impl Identities {
    pub fn from_keys(keys: Vec<age::x25519::Identity>) -> Identities {
        Identities { keys }
    }

    /// A reader of the plaintext of an age file read from `input`.
    pub(crate) fn decrypt<'a, R: Read + 'a>(&self, input: R, path: &Path) -> Result<Box<dyn Read + 'a>, BackupError> {
        let d = age::Decryptor::new(input).map_err(|e| BackupError::Corrupt {
            path: path.to_path_buf(),
            problem: format!("not a readable age file ({e})"),
        })?;
        let r = d
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => BackupError::Crypt(format!(
                    "{}: none of the given identities can decrypt it; use the key of one of the recipients the backup was made for",
                    path.display()
                )),
                other => BackupError::Corrupt {
                    path: path.to_path_buf(),
                    problem: other.to_string(),
                },
            })?;
        Ok(Box::new(r))
    }
}
