//! What a backup directory holds: manifests of base backups, log segments and
//! verifications, read back in order.

use crate::{io, BackupError, MANIFESTS_MAX};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const BASE_DIR: &str = "base";
pub const ARCHIVE_DIR: &str = "archive";
pub const VERIFIED_DIR: &str = "verified";
pub const BASE_FORMAT: &str = "hale-backup-base/1";
pub const SEGMENT_FORMAT: &str = "hale-backup-segment/1";
pub const VERIFY_FORMAT: &str = "hale-backup-verify/1";

/// One base backup: an encrypted, consistent image of a node's store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BaseManifest {
    pub format: String,
    /// When the copy was taken (the node's clock, ms since the epoch).
    pub created_ms: i64,
    /// The raft log index and term the image reflects (`None`: an empty store).
    pub last_log_index: Option<u64>,
    pub last_log_term: u64,
    /// The greatest command time (ms) among the last entries the image
    /// reflects, read from the node's log when the copy was taken (`None` when
    /// the log no longer held them). A restore to a time picks bases by it.
    pub last_command_ms: Option<i64>,
    /// `hale_store` content hash of the image: what a restore must reproduce.
    pub content_hash: String,
    /// The encrypted image, beside this manifest.
    pub file: String,
    pub file_sha256: String,
    pub encrypted_bytes: u64,
    pub plain_bytes: u64,
    /// age recipients (public keys) that can decrypt it.
    pub recipients: Vec<String>,
    /// Whether the image is also under the store's own SQLCipher key.
    pub store_keyed: bool,
    pub hale_version: String,
}

/// One archived run of committed raft log entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SegmentManifest {
    pub format: String,
    pub created_ms: i64,
    pub first_index: u64,
    pub last_index: u64,
    pub entries: u64,
    /// Command times (ms) of the first and last command in the segment, and
    /// the greatest (times come from the accepting node's clock).
    pub first_time_ms: Option<i64>,
    pub last_time_ms: Option<i64>,
    pub max_time_ms: Option<i64>,
    pub file: String,
    pub file_sha256: String,
    pub encrypted_bytes: u64,
    pub plain_bytes: u64,
}

/// The outcome of one `hale backup verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRecord {
    pub format: String,
    pub verified_ms: i64,
    pub ok: bool,
    /// The base restored into scratch and checked.
    pub base_file: String,
    pub base_last_log_index: Option<u64>,
    pub content_hash: String,
    /// Archive segments whose files were decrypted and decoded.
    pub segments_checked: u64,
    /// The highest index the archive continuously reaches from the base.
    pub archive_last_index: Option<u64>,
    /// An older base replayed through the archive to this base's index, with
    /// equal content hashes (`None`: there was no older base to replay).
    pub replayed_from_index: Option<u64>,
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// A backup directory's manifests, each list in order.
#[derive(Debug, Default)]
pub struct Catalog {
    pub dir: PathBuf,
    /// Oldest first, by log index then time.
    pub bases: Vec<BaseManifest>,
    /// By first index.
    pub segments: Vec<SegmentManifest>,
    /// Oldest first.
    pub verified: Vec<VerifyRecord>,
}

fn read_manifests<T: serde::de::DeserializeOwned>(dir: &Path, format: &str) -> Result<Vec<T>, BackupError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for f in rd {
        let f = f.map_err(io(dir))?;
        let path = f.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        if out.len() >= MANIFESTS_MAX {
            return Err(BackupError::Invalid(format!(
                "{} holds more than {MANIFESTS_MAX} manifests; prune it (hale backup prune)",
                dir.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
            path: path.clone(),
            problem: format!("not JSON ({e})"),
        })?;
        if v.get("format").and_then(|f| f.as_str()) != Some(format) {
            return Err(BackupError::Corrupt {
                path,
                problem: format!("not a {format} manifest"),
            });
        }
        out.push(serde_json::from_value(v).map_err(|e| BackupError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?);
    }
    Ok(out)
}

impl Catalog {
    pub fn load(dir: &Path) -> Result<Catalog, BackupError> {
        let mut bases: Vec<BaseManifest> = read_manifests(&dir.join(BASE_DIR), BASE_FORMAT)?;
        bases.sort_by(|a, b| {
            a.last_log_index
                .cmp(&b.last_log_index)
                .then(a.created_ms.cmp(&b.created_ms))
        });
        let mut segments: Vec<SegmentManifest> = read_manifests(&dir.join(ARCHIVE_DIR), SEGMENT_FORMAT)?;
        segments.sort_by(|a, b| a.first_index.cmp(&b.first_index).then(a.last_index.cmp(&b.last_index)));
        let mut verified: Vec<VerifyRecord> = read_manifests(&dir.join(VERIFIED_DIR), VERIFY_FORMAT)?;
        verified.sort_by_key(|v| v.verified_ms);
        Ok(Catalog {
            dir: dir.to_path_buf(),
            bases,
            segments,
            verified,
        })
    }

    pub fn base_path(&self, b: &BaseManifest) -> PathBuf {
        self.dir.join(BASE_DIR).join(&b.file)
    }

    pub fn segment_path(&self, s: &SegmentManifest) -> PathBuf {
        self.dir.join(ARCHIVE_DIR).join(&s.file)
    }

    pub fn newest_base(&self) -> Option<&BaseManifest> {
        self.bases.iter().max_by_key(|b| (b.created_ms, b.last_log_index))
    }

    /// The highest index the archive reaches without a gap from `from`
    /// (`None`: it holds nothing at `from`).
    pub fn archive_reach(&self, from: u64) -> Option<u64> {
        let mut next = from;
        let mut reach = None;
        for s in &self.segments {
            if s.last_index < next {
                continue;
            }
            if s.first_index > next {
                break;
            }
            reach = Some(s.last_index);
            next = s.last_index + 1;
        }
        reach
    }

    /// The highest archived index (whether or not it is reachable).
    pub fn archive_last_index(&self) -> Option<u64> {
        self.segments.iter().map(|s| s.last_index).max()
    }

    pub fn last_ok_verification(&self) -> Option<&VerifyRecord> {
        self.verified.iter().rev().find(|v| v.ok)
    }

    /// The span a restore can reach: from the oldest base's index to the
    /// archive's continuous reach from the newest base that has one.
    pub fn restorable(&self) -> Option<(u64, u64)> {
        let oldest = self.bases.first()?;
        let low = oldest.last_log_index.unwrap_or(0);
        let mut high = low;
        for b in &self.bases {
            let bi = b.last_log_index.unwrap_or(0);
            high = high.max(bi);
            let from = b.last_log_index.map(|i| i + 1).unwrap_or(0);
            if let Some(r) = self.archive_reach(from) {
                high = high.max(r);
            }
        }
        Some((low, high))
    }
}

/// A fresh file name stem: `prefix-<a:020>-<b:020>-<random>` (sortable, and
/// never the name of an earlier interrupted write).
pub(crate) fn stem(prefix: &str, a: u64, b: u64) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{a:020}-{b:020}-{}", &r[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: u64, last: u64) -> SegmentManifest {
        SegmentManifest {
            format: SEGMENT_FORMAT.into(),
            created_ms: 0,
            first_index: first,
            last_index: last,
            entries: last - first + 1,
            first_time_ms: None,
            last_time_ms: None,
            max_time_ms: None,
            file: String::new(),
            file_sha256: String::new(),
            encrypted_bytes: 0,
            plain_bytes: 0,
        }
    }

    fn check(segments: &[(u64, u64)], from: u64, expect: Option<u64>) {
        let c = Catalog {
            segments: segments.iter().map(|&(a, b)| seg(a, b)).collect(),
            ..Catalog::default()
        };
        assert_eq!(c.archive_reach(from), expect, "{segments:?} from {from}");
    }

    #[test]
    fn archive_reach_stops_at_the_first_gap() {
        check(&[], 5, None);
        check(&[(1, 10), (11, 20)], 5, Some(20));
        check(&[(1, 10), (12, 20)], 5, Some(10));
        check(&[(1, 10), (11, 20)], 21, None);
        check(&[(1, 10), (11, 20)], 11, Some(20));
        check(&[(6, 10)], 5, None);
        // Overlapping segments (a re-archive after a restart) still chain.
        check(&[(1, 10), (5, 15), (16, 16)], 3, Some(16));
    }
}
