//! Backups and point-in-time restore of a Hale node.
//!
//! A backup directory holds three kinds of file, each written once and never
//! changed (a node needs only to create files there, never to delete or
//! overwrite them, so the directory can sit on write-once storage):
//!
//! - `base/`: **base backups**, each a consistent image of the node's store
//!   (SQLite's online backup API, one read transaction, the node keeps
//!   writing) encrypted with age, and a JSON manifest beside it: the raft log
//!   index the image reflects, its content hash, and the SHA-256 of the
//!   encrypted file.
//! - `archive/`: **log segments**, the committed raft log copied continuously
//!   (bytes exactly as the log stores them), also encrypted, with manifests
//!   giving their index range, the command times they span and their SHA-256.
//! - `verified/`: a record of each verification (restore into scratch,
//!   recompute, compare), so `/ops/status` and `hale doctor` can say when a
//!   backup was last proven restorable.
//!
//! A restore takes the newest base at or before the target and replays the
//! archived entries after it through the same deterministic apply the node
//! uses, stopping at a log index or before the first command stamped after a
//! time: the ransomware and bad-bulk-update case. The result is a data
//! directory that starts as a new single-node cluster.
//!
//! A manifest is written after its data file, so a file without a manifest is
//! an interrupted write and is ignored (a later run writes under a new name).
//!
//! Architecture Invariant: this crate knows files, the store and the raft
//! log's stored form; it knows nothing of HTTP, FHIR or a running node's
//! tasks (the server schedules it, the CLI calls it).

pub mod archive;
pub mod base;
pub mod catalog;
mod crypt;
mod files;
pub mod restore;

pub use catalog::{BaseManifest, Catalog, SegmentManifest, VerifyRecord};
pub use crypt::{generate_identity_file, read_identities, Identities};
pub use hale_continuity::Recipients;

use std::path::PathBuf;

/// Entries in one archive segment at most.
pub const SEGMENT_ENTRIES_MAX: u64 = 4_096;
/// Stored entry bytes in one archive segment at most (one entry may pass it).
pub const SEGMENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Entries applied per transaction during a restore's replay.
pub const REPLAY_BATCH_MAX: usize = 256;
/// Manifests read from one backup directory at most.
pub const MANIFESTS_MAX: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the store: {0}")]
    Store(#[from] hale_store::StoreError),
    #[error("the raft log or state: {0}")]
    Raft(String),
    #[error("encryption: {0}")]
    Crypt(String),
    #[error("{path} is damaged: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unreachable(String),
}

impl From<hale_store::codec::CodecError> for BackupError {
    fn from(e: hale_store::codec::CodecError) -> Self {
        BackupError::Raft(format!("a log entry's command: {e}"))
    }
}

impl From<hale_raft::types::StorageError> for BackupError {
    fn from(e: hale_raft::types::StorageError) -> Self {
        BackupError::Raft(e.to_string())
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.into();
    move |source| BackupError::Io { path, source }
}

/// Milliseconds since the Unix epoch, for manifests (never used in apply).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
