//! Opening SQLite files, and encryption at rest.
//!
//! Every SQLite file Hale writes under its data directory — the store
//! (`hale.db`) and its read connections, raft snapshots, the raft log
//! (`raft.db`), the site journal (`journal.db`), the web UI's sessions
//! (`ui-sessions.db`) — is opened through [`open`]. In a build with the
//! `sqlcipher` cargo feature, SQLite is SQLCipher and [`open`] applies the
//! node's key (set once at start from `[store] key_file` or
//! `HALE_STORE_KEY_FILE`, [`set_key`]) before anything else, then reads
//! `sqlite_master` to check it: a wrong or missing key fails there, before
//! anything is written, so an existing store is never replaced by a fresh
//! empty one. Without the feature, a key is refused ([`KeyError::NotBuilt`]):
//! plain SQLite ignores `PRAGMA key`, and a configured key that silently did
//! nothing would be worse than none.
//!
//! The key is process-wide: a process serves one data directory, and every
//! crate that opens SQLite reaches it through this module without a key
//! threaded through its API. The nodes of a cluster share one key, because a
//! raft snapshot is the store's file, encrypted, and is installed as sent.

use parking_lot::RwLock;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::{Path, PathBuf};

/// Whether this build can encrypt (the `sqlcipher` cargo feature).
pub const ENCRYPTION_AVAILABLE: bool = cfg!(feature = "sqlcipher");

/// Environment variable naming the key file (the binary reads it; `[store]
/// key_file` in the config file is the same setting).
pub const KEY_FILE_ENV: &str = "HALE_STORE_KEY_FILE";

/// Hex digits in a key file: a raw 256-bit key.
pub const KEY_HEX_CHARS: usize = 64;

/// A raw 256-bit SQLCipher key (used as is: no passphrase derivation, so
/// opening a connection costs no key stretching).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    hex: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from its 64 hexadecimal characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Key> {
        let t = text.trim();
        (t.len() == KEY_HEX_CHARS && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Key {
            hex: t.to_ascii_lowercase(),
        })
    }

    /// Read a key file: 64 hexadecimal characters (`openssl rand -hex 32`).
    pub fn read_file(path: &Path) -> Result<Key, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let key = Key::from_hex(&text).ok_or_else(|| KeyError::Format {
            path: path.to_path_buf(),
            chars: text.trim().chars().count(),
        })?;
        #[cfg(unix)]
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the store key file is readable by other users: chmod 600 it");
            }
        }
        Ok(key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the store key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the store key file {path} must hold exactly 64 hexadecimal characters (a 256-bit key; make one with `openssl rand -hex 32 > {path}`), not {chars} characters of other text")]
    Format { path: PathBuf, chars: usize },
    #[error("a store key is configured ({what}), but this Hale binary was built without the `sqlcipher` feature and cannot encrypt its files: build it with `cargo build --release -p hale --features sqlcipher`, or remove [store] key_file and HALE_STORE_KEY_FILE to run unencrypted")]
    NotBuilt { what: String },
}

/// Why a SQLite file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the store {path} cannot be opened with this key: wrong key, or the store is not encrypted. Start with the key file it was created with ([store] key_file or HALE_STORE_KEY_FILE); a store written without a key must be exported and imported into a new data directory started with the key. Nothing was changed")]
    WrongKey { path: PathBuf },
    #[error("the store {path} cannot be opened without a key: it is encrypted (or not a SQLite database). Set [store] key_file or HALE_STORE_KEY_FILE to the key file it was created with, in a Hale built with the `sqlcipher` feature. Nothing was changed")]
    NoKey { path: PathBuf },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot open {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
}

static KEY: RwLock<Option<Key>> = parking_lot::const_rwlock(None);

/// Set (or clear) the key every later [`open`] applies. Refused with a key in
/// a build without the `sqlcipher` feature. Connections already open keep
/// the key they were opened with.
pub fn set_key(key: Option<Key>) -> Result<(), KeyError> {
    if key.is_some() && !ENCRYPTION_AVAILABLE {
        return Err(KeyError::NotBuilt {
            what: "a key was passed to the store".into(),
        });
    }
    *KEY.write() = key;
    Ok(())
}

/// Read `path` and make it the key of every later [`open`] (the binary calls
/// this at start with `[store] key_file` or `HALE_STORE_KEY_FILE`).
pub fn use_key_file(path: &Path) -> Result<(), KeyError> {
    if !ENCRYPTION_AVAILABLE {
        return Err(KeyError::NotBuilt {
            what: format!("key file {}", path.display()),
        });
    }
    set_key(Some(Key::read_file(path)?))
}

/// Whether [`open`] applies a key.
pub fn key_set() -> bool {
    KEY.read().is_some()
}

/// Open the SQLite file at `path` with the process's key (if one is set).
pub fn open(path: &Path, flags: OpenFlags) -> Result<Connection, OpenError> {
    let key = KEY.read().clone();
    open_with_key(path, flags, key.as_ref())
}

/// Open the SQLite file at `path` read-write (created if missing) with the process's key.
pub fn open_rw(path: &Path) -> Result<Connection, OpenError> {
    open(path, OpenFlags::default())
}

/// Check the process's key against every SQLite file directly in `dir`
/// (`*.db`, read-only, in name order, so `hale.db` first): a node started with
/// the wrong key stops with this one error, before raft or anything else has
/// opened a file and wrapped the error in its own.
pub fn check_dir(dir: &Path) -> Result<(), OpenError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "db") && p.is_file())
        .collect();
    files.sort();
    for f in files {
        drop(open(
            &f,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?);
    }
    Ok(())
}

/// Open the SQLite file at `path` with `key` (or none): the key is applied
/// first, then checked by reading `sqlite_master`.
pub fn open_with_key(path: &Path, flags: OpenFlags, key: Option<&Key>) -> Result<Connection, OpenError> {
    if key.is_some() && !ENCRYPTION_AVAILABLE {
        return Err(KeyError::NotBuilt {
            what: format!("opening {}", path.display()),
        }
        .into());
    }
    if flags.contains(OpenFlags::SQLITE_OPEN_READ_WRITE) && path.exists() {
        // Check the key on a read-only connection first: a read-write one that
        // found a WAL would checkpoint it when closed, even after a failed
        // check, and a wrong key must leave every byte as it was.
        let ro = flags
            .difference(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)
            .union(OpenFlags::SQLITE_OPEN_READ_ONLY);
        drop(keyed(path, ro, key)?);
    }
    keyed(path, flags, key)
}

fn keyed(path: &Path, flags: OpenFlags, key: Option<&Key>) -> Result<Connection, OpenError> {
    let sql = |source| OpenError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
    if let Some(k) = key {
        // Validated hex, so nothing to quote. A raw key: SQLCipher uses it as
        // the AES key (with the file's salt for the HMAC key), no PBKDF2.
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", k.hex))
            .map_err(sql)?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(conn),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => Err(match key {
            Some(_) => OpenError::WrongKey {
                path: path.to_path_buf(),
            },
            None => OpenError::NoKey {
                path: path.to_path_buf(),
            },
        }),
        Err(e) => Err(sql(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_format() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        assert!(Key::from_hex(hex).is_some());
        assert!(Key::from_hex(&format!("  {hex}\n")).is_some());
        assert!(Key::from_hex(&hex[1..]).is_none());
        assert!(Key::from_hex(&format!("{}g", &hex[1..])).is_none());
        assert_eq!(format!("{:?}", Key::from_hex(hex).unwrap()), "Key(..)");
    }

    #[cfg(not(feature = "sqlcipher"))]
    #[test]
    fn a_key_is_refused_without_sqlcipher() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "ab".repeat(32)).unwrap();
        let e = use_key_file(&file).unwrap_err().to_string();
        assert!(e.contains("built without the `sqlcipher` feature"), "{e}");
        assert!(!key_set());
        let key = Key::from_hex(&"ab".repeat(32)).unwrap();
        let e = open_with_key(&dir.path().join("x.db"), OpenFlags::default(), Some(&key))
            .unwrap_err()
            .to_string();
        assert!(e.contains("without the `sqlcipher` feature"), "{e}");
        assert!(!dir.path().join("x.db").exists());
    }
}
