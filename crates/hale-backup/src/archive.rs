//! The log archive: committed raft log entries copied from a node's log into
//! encrypted, write-once segments, so a restore can stop at any index.
//!
//! Only applied entries are copied (applied implies committed, so nothing
//! archived is ever truncated away). The archive continues from the last
//! archived index; if the node purged entries past it after a snapshot (the
//! archive fell behind, say while its storage was unreachable), it restarts
//! from the newest base backup that covers what was purged, and otherwise
//! asks for a new base.

use crate::catalog::{stem, Catalog, SegmentManifest, ARCHIVE_DIR, SEGMENT_FORMAT};
use crate::files::{create_new, fsync_dir, write_json_new, HashingWriter};
use crate::{io, now_ms, BackupError, Identities, Recipients, SEGMENT_BYTES_MAX, SEGMENT_ENTRIES_MAX};
use hale_raft::log_store::LogStore;
use hale_raft::types::Entry;
use openraft::EntryPayload;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The first bytes of a segment's plaintext; records follow.
const SEGMENT_MAGIC: &[u8] = b"hale-archive/1\n";
/// One stored entry at most (a command is bounded far below this).
const RECORD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// What one archive step did.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing new to copy.
    Idle,
    /// A segment was written.
    Wrote(SegmentManifest),
    /// The archive has no base to continue from, or the log no longer holds
    /// the next entry and no base covers the gap: take a base backup.
    NeedsBase { next: Option<u64>, log_first: Option<u64> },
}

pub struct Archiver {
    data_dir: PathBuf,
    dir: PathBuf,
    recipients: Recipients,
    /// The next index to copy (`None` until a base or a segment exists).
    next: Option<u64>,
}

impl Archiver {
    /// Continue the archive in `dir` for the node whose data is `data_dir`.
    pub fn open(data_dir: &Path, dir: &Path, recipients: Recipients) -> Result<Archiver, BackupError> {
        let mut a = Archiver {
            data_dir: data_dir.to_path_buf(),
            dir: dir.to_path_buf(),
            recipients,
            next: None,
        };
        a.reload()?;
        Ok(a)
    }

    /// Re-read where the archive stands (after a base backup was taken).
    pub fn reload(&mut self) -> Result<(), BackupError> {
        let c = Catalog::load(&self.dir)?;
        let from_segments = c.archive_last_index().map(|i| i + 1);
        let from_base = c.newest_base().map(|b| b.last_log_index.map(|i| i + 1).unwrap_or(0));
        self.next = match (self.next, from_segments) {
            (Some(n), Some(s)) => Some(n.max(s)),
            (n, s) => n.or(s),
        };
        if self.next.is_none() {
            self.next = from_base;
        }
        // A newer base covers a gap the log can no longer fill.
        if let (Some(n), Some(b)) = (self.next, from_base) {
            if b > n {
                let first = LogStore::first_index(&self.data_dir)?;
                if first.is_some_and(|f| f > n) {
                    self.next = Some(b);
                }
            }
        }
        Ok(())
    }

    /// The next index the archive will copy.
    pub fn next_index(&self) -> Option<u64> {
        self.next
    }

    /// Copy what the node has applied up to `applied` (one segment at most).
    pub fn step(&mut self, applied: u64) -> Result<Step, BackupError> {
        if self.next.is_none() {
            self.reload()?;
        }
        let Some(next) = self.next else {
            return Ok(Step::NeedsBase {
                next: None,
                log_first: LogStore::first_index(&self.data_dir)?,
            });
        };
        if next > applied {
            return Ok(Step::Idle);
        }
        let first = LogStore::first_index(&self.data_dir)?;
        if first.is_some_and(|f| f > next) {
            self.reload()?;
            if self.next.is_some_and(|n| first.is_some_and(|f| f > n)) {
                return Ok(Step::NeedsBase {
                    next: self.next,
                    log_first: first,
                });
            }
            return self.step(applied);
        }
        let rows = LogStore::read_raw(&self.data_dir, next, applied, SEGMENT_ENTRIES_MAX, SEGMENT_BYTES_MAX)?;
        if rows.is_empty() {
            return Ok(Step::Idle);
        }
        let m = write_segment(&self.dir, &rows, &self.recipients)?;
        self.next = Some(m.last_index + 1);
        Ok(Step::Wrote(m))
    }
}

fn write_segment(dir: &Path, rows: &[(u64, Vec<u8>)], recipients: &Recipients) -> Result<SegmentManifest, BackupError> {
    assert!(!rows.is_empty(), "a segment holds at least one entry");
    assert!(
        rows.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "a segment's entries are consecutive"
    );
    let (first_index, last_index) = (rows[0].0, rows[rows.len() - 1].0);
    let mut plain = Vec::with_capacity(SEGMENT_MAGIC.len() + rows.iter().map(|r| r.1.len() + 12).sum::<usize>());
    plain.extend_from_slice(SEGMENT_MAGIC);
    let mut times: Vec<i64> = Vec::new();
    for (idx, bytes) in rows {
        let e = hale_raft::log_store::decode_entry(*idx, bytes)?;
        if let EntryPayload::Normal(cmd) = &e.payload {
            times.push(cmd.time_ms()?);
        }
        plain.extend_from_slice(&idx.to_le_bytes());
        plain.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        plain.extend_from_slice(bytes);
    }
    let dir = dir.join(ARCHIVE_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = stem("seg", first_index, last_index);
    let file = format!("{name}.log.age");
    let path = dir.join(&file);
    let out = create_new(&path)?;
    let w = recipients
        .encrypt_stream(&mut &plain[..], HashingWriter::new(out))
        .map_err(|e| BackupError::Crypt(e.to_string()))?;
    let (mut out, file_sha256, encrypted_bytes) = w.finish();
    out.flush().and_then(|()| out.sync_all()).map_err(io(&path))?;
    let m = SegmentManifest {
        format: SEGMENT_FORMAT.into(),
        created_ms: now_ms(),
        first_index,
        last_index,
        entries: rows.len() as u64,
        first_time_ms: times.first().copied(),
        last_time_ms: times.last().copied(),
        max_time_ms: times.iter().copied().max(),
        file,
        file_sha256,
        encrypted_bytes,
        plain_bytes: plain.len() as u64,
    };
    write_json_new(&dir.join(format!("{name}.json")), &m)?;
    fsync_dir(&dir)?;
    Ok(m)
}

/// Decrypt a segment, check it against its manifest, and decode its entries.
pub fn read_segment(path: &Path, m: &SegmentManifest, ids: &Identities) -> Result<Vec<Entry>, BackupError> {
    // One read: hash the ciphertext, then decrypt it from memory (a segment
    // is at most SEGMENT_BYTES_MAX plus age's overhead).
    let ciphertext = std::fs::read(path).map_err(io(path))?;
    let sha = crate::files::hex(&<sha2::Sha256 as sha2::Digest>::digest(&ciphertext));
    if sha != m.file_sha256 {
        return Err(BackupError::Corrupt {
            path: path.to_path_buf(),
            problem: format!(
                "its SHA-256 is {sha}, but the manifest says {}; the file was changed or damaged after it was written",
                m.file_sha256
            ),
        });
    }
    let mut r = ids.decrypt(&ciphertext[..], path)?;
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).map_err(|e| BackupError::Corrupt {
        path: path.to_path_buf(),
        problem: format!("decryption failed part-way ({e})"),
    })?;
    let corrupt = |problem: String| BackupError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let body = plain
        .strip_prefix(SEGMENT_MAGIC)
        .ok_or_else(|| corrupt("not a Hale log segment (wrong header)".into()))?;
    let mut out = Vec::with_capacity(m.entries as usize);
    let mut at = 0usize;
    while at < body.len() {
        if body.len() - at < 12 {
            return Err(corrupt(format!("a record is cut short at byte {at}")));
        }
        let idx = u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(body[at + 8..at + 12].try_into().expect("4 bytes"));
        if len > RECORD_BYTES_MAX || body.len() - at - 12 < len as usize {
            return Err(corrupt(format!("entry {idx} claims {len} bytes, more than remain")));
        }
        let bytes = &body[at + 12..at + 12 + len as usize];
        let e = hale_raft::log_store::decode_entry(idx, bytes)?;
        if e.log_id.index != idx {
            return Err(corrupt(format!("entry {idx} holds log id {}", e.log_id)));
        }
        out.push(e);
        at += 12 + len as usize;
    }
    let expect_first = m.first_index;
    let consecutive = out
        .iter()
        .enumerate()
        .all(|(i, e)| e.log_id.index == expect_first + i as u64);
    if out.len() as u64 != m.entries || !consecutive || out.last().map(|e| e.log_id.index) != Some(m.last_index) {
        return Err(corrupt(format!(
            "it holds {} entries, not the {} consecutive entries {}..={} its manifest lists",
            out.len(),
            m.entries,
            m.first_index,
            m.last_index
        )));
    }
    Ok(out)
}
