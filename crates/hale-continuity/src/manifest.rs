//! The pack manifest (`manifest.json`): what the pack covers, which store
//! state it reflects, and the SHA-256 of every file.
//!
//! The manifest is always plaintext. It holds no patient data (site, dates,
//! counts, file names, hashes), and keeping it readable lets a node report a
//! pack's age and check its files without the private key, which by design is
//! not on the node. `sha256` is the hash of the bytes on disk (the age
//! ciphertext when encrypted): anyone can check a copy is complete.
//! `plaintext_sha256` is the hash after decryption, so that whoever decrypts
//! can check the result. Hashes detect damage, not forgery: anyone with the
//! public key could make new ciphertext; signing packs is future work.

use crate::model::PackData;
use crate::time::rfc3339_utc;
use crate::{PackFile, PackOptions, Protection};
use serde::{Deserialize, Serialize};

/// The manifest's file name in every pack.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: &str = "hale-downtime-pack/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Site code, upper case.
    pub site: String,
    pub site_name: String,
    /// Generation time, RFC 3339 UTC; the data is as of this time.
    pub generated_at: String,
    pub generated_at_ms: i64,
    /// The store's `last_applied` log index: the data reflects every write up to it.
    pub store_index: u64,
    /// When the store last applied a change (newest write or audit record), if known.
    pub last_change_at: Option<String>,
    pub range: ManifestRange,
    /// `age-x25519` or `insecure-plaintext`.
    pub protection: String,
    /// The age recipients (public keys) the files are encrypted to.
    pub recipients: Vec<String>,
    /// What `files[].sha256` is computed over.
    pub sha256_of: String,
    /// Every file of the pack except this manifest.
    pub files: Vec<ManifestFile>,
    pub counts: PackCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRange {
    /// First and last calendar day covered (`YYYY-MM-DD`, in `zone`).
    pub first_day: String,
    pub last_day: String,
    /// The same days as UTC instants, `[from, to_exclusive)`.
    pub from: String,
    pub to_exclusive: String,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub contents: String,
    pub bytes: u64,
    /// SHA-256 of the file as written (ciphertext when `encrypted`).
    pub sha256: String,
    /// SHA-256 of the decrypted content (equal to `sha256` when not encrypted).
    pub plaintext_sha256: String,
    pub encrypted: bool,
    pub pages: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackCounts {
    pub sessions: usize,
    pub appointments: usize,
    pub patients: usize,
}

impl Manifest {
    pub(crate) fn to_json_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }
}

pub(crate) fn build(data: &PackData, opts: &PackOptions, files: &[PackFile]) -> Manifest {
    let (protection, recipients) = match &opts.protection {
        Protection::Age(r) => ("age-x25519", r.to_strings()),
        Protection::InsecurePlaintext => ("insecure-plaintext", Vec::new()),
    };
    Manifest {
        format: MANIFEST_FORMAT.into(),
        site: data.site.clone(),
        site_name: data.site_name.clone(),
        generated_at: rfc3339_utc(data.now_ms),
        generated_at_ms: data.now_ms,
        store_index: data.store_index,
        last_change_at: data.last_change_ms.map(rfc3339_utc),
        range: ManifestRange {
            first_day: data.first_day.format("%Y-%m-%d").to_string(),
            last_day: data.last_day.format("%Y-%m-%d").to_string(),
            from: rfc3339_utc(data.from_ms),
            to_exclusive: rfc3339_utc(data.to_ms),
            zone: opts.zone.name().into(),
        },
        protection: protection.into(),
        recipients,
        sha256_of: if matches!(opts.protection, Protection::Age(_)) {
            "the bytes of each file as written, i.e. the age ciphertext; plaintext_sha256 is the hash after decryption"
        } else {
            "the bytes of each file as written (plaintext)"
        }
        .into(),
        files: files
            .iter()
            .map(|f| ManifestFile {
                name: f.name.clone(),
                contents: f.contents.into(),
                bytes: f.bytes.len() as u64,
                sha256: f.sha256.clone(),
                plaintext_sha256: f.plaintext_sha256.clone(),
                encrypted: f.encrypted,
                pages: f.pages,
            })
            .collect(),
        counts: PackCounts {
            sessions: data.sessions.len(),
            appointments: data.sessions.iter().map(|s| s.entries.len()).sum(),
            patients: data.patients.len(),
        },
    }
}
