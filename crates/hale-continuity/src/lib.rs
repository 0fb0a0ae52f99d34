//! Downtime packs: for one hospital site and the coming days, printable clinic
//! lists and patient summaries (PDF), the same data as CSV, and a manifest of
//! SHA-256 hashes, optionally encrypted with age, written so that a reader
//! never sees a half-written pack.
//!
//! - [`generate`] reads a node's local SQLite store (through `hale_store`'s
//!   queries, inside one read transaction so every file reflects the same
//!   store index) and builds a [`Pack`] in memory.
//! - [`write_pack`] writes it beside the previous packs and switches the
//!   `current` link atomically, keeping the last K packs.
//! - [`verify_pack`] and [`current_pack`] read a written pack back (hash
//!   check; pack age for status pages).
//!
//! This crate knows nothing of HTTP and never reads the clock: the caller
//! passes `now_ms`. See DESIGN.md for why it is built this way.

mod afm;
pub mod bench;
mod crypt;
mod csv;
mod gather;
mod manifest;
mod model;
mod output;
pub mod pdf;
mod render;
pub mod time;

use sha2::{Digest, Sha256};
use std::path::PathBuf;

pub use crypt::Recipients;
pub use manifest::{Manifest, ManifestFile, ManifestRange, PackCounts, MANIFEST_FILE, MANIFEST_FORMAT};
pub use output::{
    current_pack, verify_pack, write_pack, write_pack_interrupted, CurrentPack, WriteStage, WrittenPack, CURRENT_LINK,
};
pub use time::Zone;

/// Days after today a pack covers by default (today is always included).
pub const DAYS_DEFAULT: u32 = 3;
/// Most days after today one pack may cover.
pub const DAYS_MAX: u32 = 14;
/// Most patients in one pack (the patient summary has a section for each).
pub const PATIENTS_PER_PACK_MAX: usize = 20_000;
/// Most appointments on one pack's clinic lists.
pub const APPOINTMENTS_PER_PACK_MAX: usize = 50_000;
/// Most slots read for one pack's sessions.
pub const SLOTS_PER_PACK_MAX: usize = 200_000;
/// Most Locations and Organizations read to find a site's clinics.
pub const LOCATIONS_MAX: usize = 20_000;
/// Most Schedules at one site.
pub const SCHEDULES_PER_SITE_MAX: usize = 5_000;
/// Most pages in one PDF.
pub const PAGES_PER_PDF_MAX: usize = 60_000;
/// Per patient: allergies, latest results (one per test), imaging reports,
/// notes, upcoming appointments and contacts shown; more are counted ("and 3 more").
pub const ALLERGIES_PER_PATIENT_MAX: usize = 20;
pub const RESULTS_PER_PATIENT_MAX: usize = 20;
/// Laboratory observations read (newest first) to find the latest of each test.
pub const RESULTS_READ_PER_PATIENT_MAX: usize = 200;
pub const IMAGING_REPORTS_PER_PATIENT_MAX: usize = 5;
pub const NOTES_PER_PATIENT_MAX: usize = 3;
/// Characters of one note's text printed (the rest is marked as cut).
pub const NOTE_CHARS_MAX: usize = 1_500;
pub const UPCOMING_PER_PATIENT_MAX: usize = 10;
pub const CONTACTS_PER_PATIENT_MAX: usize = 5;
/// Alerts (active Flags) printed per patient.
pub const ALERTS_PER_PATIENT_MAX: usize = 10;
/// Active problems printed per patient.
pub const PROBLEMS_PER_PATIENT_MAX: usize = 20;
/// Current medicines printed per patient (prescribed and reported).
pub const MEDICINES_PER_PATIENT_MAX: usize = 30;
/// Medication requests and statements read per patient.
pub const MEDICINES_READ_PER_PATIENT_MAX: usize = 200;
/// Drug chart rows (scheduled doses) per patient across the pack's days.
pub const CHART_DOSES_PER_PATIENT_MAX: usize = 120;
/// Most age recipients for one pack.
pub const RECIPIENTS_MAX: usize = 64;
/// Most packs kept in one output directory.
pub const KEEP_PACKS_MAX: usize = 100;
/// Longest site code accepted.
pub const SITE_CODE_CHARS_MAX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ContinuityError {
    #[error("reading the store failed: {0}")]
    Sql(#[from] hale_store::rusqlite::Error),
    #[error(transparent)]
    Open(#[from] hale_store::db::OpenError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no site {site:?} in this store (sites with locations: {known}); site codes come from the Location extension {}", hale_fhir::codes::EXT_SITE)]
    UnknownSite { site: String, known: String },
    #[error("invalid pack option: {0}")]
    InvalidOption(String),
    #[error("{what} exceeds the limit of {limit}; generate packs for fewer days, or raise the limit")]
    LimitExceeded { what: &'static str, limit: usize },
    #[error("stored {rtype}/{id} is not valid JSON: {detail}")]
    CorruptResource { rtype: String, id: String, detail: String },
    #[error("internal {rtype} search was refused (a bug in hale-continuity): {detail}")]
    Query { rtype: &'static str, detail: String },
    #[error("{recipient:?} is not an age X25519 recipient (age1...): {reason}")]
    InvalidRecipient { recipient: String, reason: String },
    #[error("age encryption failed: {0}")]
    Encrypt(String),
    #[error("the pack at {path} is not valid: {reason}")]
    InvalidPack { path: PathBuf, reason: String },
    #[error("pack writing stopped at {0:?} by the test hook; the previous pack is still current")]
    Interrupted(WriteStage),
    #[error("switching packs atomically needs symbolic links, which this platform does not support")]
    Unsupported,
}

pub(crate) fn io_err(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ContinuityError {
    let path = path.to_path_buf();
    move |source| ContinuityError::Io { action, path, source }
}

/// How the pack's files are protected. There is no default: writing patient
/// data in the clear must be asked for by name.
#[derive(Debug, Clone)]
pub enum Protection {
    /// Every PDF and CSV is encrypted with age for these X25519 recipients
    /// (files end in `.age`; `age -d -i key.txt` or `rage -d` decrypts them).
    /// The manifest stays plaintext (it holds no patient data) so that the
    /// pack can be checked and dated without a private key.
    Age(Recipients),
    /// Files are written unencrypted. For tests and demos only.
    InsecurePlaintext,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Site code, as in the Location / Organization `EXT_SITE` extension (e.g. `QEH`).
    /// Matched case-insensitively.
    pub site: String,
    /// Days after today to cover; today (in `zone`) is always included, so
    /// `days = 3` covers today and the next three days.
    pub days: u32,
    /// The generation time, ms since the Unix epoch. The library never reads the clock.
    pub now_ms: i64,
    /// The zone whose calendar days are covered and whose times are printed.
    pub zone: Zone,
    pub protection: Protection,
}

impl PackOptions {
    /// Options with the default number of days and UK civil time.
    pub fn new(site: impl Into<String>, now_ms: i64, protection: Protection) -> PackOptions {
        PackOptions {
            site: site.into(),
            days: DAYS_DEFAULT,
            now_ms,
            zone: Zone::default(),
            protection,
        }
    }
}

/// One file of a pack, as it is written to disk.
#[derive(Debug, Clone)]
pub struct PackFile {
    /// File name inside the pack directory (`clinic-list.pdf.age`, `manifest.json`).
    pub name: String,
    /// The bytes written: age ciphertext when encrypted.
    pub bytes: Vec<u8>,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
    /// Lower-case hex SHA-256 of the plaintext (equal to `sha256` when not encrypted).
    pub plaintext_sha256: String,
    pub encrypted: bool,
    /// What the file holds, in words (for the manifest).
    pub contents: &'static str,
    /// Pages, for PDFs.
    pub pages: Option<usize>,
}

/// A generated pack, held in memory until [`write_pack`] writes it.
#[derive(Debug, Clone)]
pub struct Pack {
    pub manifest: Manifest,
    /// The data files followed by `manifest.json`.
    pub files: Vec<PackFile>,
}

impl Pack {
    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }

    pub fn file(&self, name: &str) -> Option<&PackFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The descriptive part of this pack's directory name (time, site, store index);
    /// [`write_pack`] puts a sequence number in front.
    pub fn dir_name(&self) -> String {
        format!(
            "{}-{}-idx{}",
            time::compact_utc(self.manifest.generated_at_ms),
            self.manifest.site,
            self.manifest.store_index
        )
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn validate(opts: &PackOptions) -> Result<String, ContinuityError> {
    let site = opts.site.trim();
    if site.is_empty() || site.chars().count() > SITE_CODE_CHARS_MAX {
        return Err(ContinuityError::InvalidOption(format!(
            "the site code must be 1 to {SITE_CODE_CHARS_MAX} characters, got {:?}",
            opts.site
        )));
    }
    if !site.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ContinuityError::InvalidOption(format!(
            "the site code may hold letters, digits, '-' and '_' only, got {:?}",
            opts.site
        )));
    }
    if opts.days > DAYS_MAX {
        return Err(ContinuityError::InvalidOption(format!(
            "days must be 0 to {DAYS_MAX} (today is always included), got {}",
            opts.days
        )));
    }
    Ok(site.to_ascii_uppercase())
}

/// Build the pack for `opts.site` from the store behind `conn`.
///
/// Every query runs in one read transaction (unless the caller already holds
/// one), so the files and the manifest's store index describe one state of
/// the store even while the node keeps applying writes.
pub fn generate(conn: &hale_store::rusqlite::Connection, opts: &PackOptions) -> Result<Pack, ContinuityError> {
    let site = validate(opts)?;
    let snapshot = gather::Snapshot::begin(conn)?;
    let data = gather::gather(conn, opts, &site)?;
    drop(snapshot);
    let rendered = render::render(&data, opts)?;
    let mut files = Vec::with_capacity(rendered.len() + 1);
    for r in rendered {
        files.push(crypt::protect(r, &opts.protection)?);
    }
    let manifest = manifest::build(&data, opts, &files);
    let bytes = manifest.to_json_bytes();
    let sha = sha256_hex(&bytes);
    files.push(PackFile {
        name: manifest::MANIFEST_FILE.to_string(),
        plaintext_sha256: sha.clone(),
        sha256: sha,
        bytes,
        encrypted: false,
        contents: "this manifest",
        pages: None,
    });
    Ok(Pack { manifest, files })
}
