//! Restore (to the latest point, a log index, or a time) and verification.

use crate::archive::read_segment;
use crate::catalog::{stem, BaseManifest, Catalog, VerifyRecord, VERIFIED_DIR, VERIFY_FORMAT};
use crate::files::{hex, write_json_new, HashingReader, Scratch};
use crate::{io, now_ms, BackupError, Identities, REPLAY_BATCH_MAX};
use hale_raft::state_machine::StateMachineStore;
use hale_raft::types::Entry;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// How far a restore goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// As far as the archive reaches without a gap.
    Latest,
    /// Up to and including this log index.
    Index(u64),
    /// Every command stamped at or before this time (ms since the epoch);
    /// replay stops before the first command stamped after it.
    Time(i64),
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub base_file: String,
    pub base_last_log_index: Option<u64>,
    pub entries_replayed: u64,
    pub last_log_index: Option<u64>,
    /// The time of the last command replayed (or `None` when none was).
    pub last_command_ms: Option<i64>,
    /// The first command left out, when the target stopped the replay.
    pub stopped_before_index: Option<u64>,
    pub content_hash: String,
    pub plain_bytes: u64,
    pub seconds: f64,
}

/// Choose the base a restore to `target` starts from.
pub fn choose_base(c: &Catalog, target: Target) -> Result<&BaseManifest, BackupError> {
    let ok = |b: &&BaseManifest| match target {
        Target::Latest => true,
        Target::Index(i) => b.last_log_index.is_none_or(|bi| bi <= i),
        // Commands are stamped by the accepting node before they are applied,
        // so a base holds none stamped later than the copy was taken.
        Target::Time(t) => b.last_command_ms.unwrap_or(b.created_ms) <= t,
    };
    let pick = match target {
        Target::Latest => c.bases.iter().max_by_key(|b| (b.last_log_index, b.created_ms)),
        _ => c
            .bases
            .iter()
            .filter(ok)
            .max_by_key(|b| (b.last_log_index, b.created_ms)),
    };
    pick.ok_or_else(|| match (c.bases.first(), target) {
        (None, _) => BackupError::Invalid(format!(
            "{} holds no base backup (base/*.json); take one with `hale backup --to {}`",
            c.dir.display(),
            c.dir.display()
        )),
        (Some(b), t) => BackupError::Invalid(format!(
            "no base backup is old enough for {t:?}: the oldest reflects index {:?}, commands up to {:?} ms, taken at {} ms",
            b.last_log_index, b.last_command_ms, b.created_ms
        )),
    })
}

/// Decrypt `base` into `data_dir/hale.db` (which must not exist), checking
/// the file's SHA-256 and then the image's content hash against the manifest.
pub fn restore_base(c: &Catalog, base: &BaseManifest, ids: &Identities, data_dir: &Path) -> Result<u64, BackupError> {
    let path = c.base_path(base);
    let dest = data_dir.join(hale_store::DB_FILE);
    if dest.exists() {
        return Err(BackupError::Invalid(format!(
            "{} exists; restore into a new, empty data directory",
            dest.display()
        )));
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let f = std::fs::File::open(&path).map_err(io(&path))?;
    let mut hashing = HashingReader::new(std::io::BufReader::new(f));
    let copied = {
        let mut plain = ids.decrypt(&mut hashing, &path)?;
        let mut out = crate::files::create_new(&dest)?;
        let n = std::io::copy(&mut plain, &mut out).map_err(|e| BackupError::Corrupt {
            path: path.clone(),
            problem: format!("decryption failed part-way ({e}); the file was changed or damaged"),
        })?;
        out.sync_all().map_err(io(&dest))?;
        n
    };
    // Read what age left unread (none, for a whole file) so the hash covers it all.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io(&path))?;
    let sha = hex(&std::mem::take(&mut hashing.hasher).finalize());
    if sha != base.file_sha256 {
        return Err(BackupError::Corrupt {
            path,
            problem: format!("its SHA-256 is {sha}, but the manifest says {}", base.file_sha256),
        });
    }
    let (_, hash) = hale_store::content_hash_at(data_dir)?;
    if hash != base.content_hash {
        return Err(BackupError::Corrupt {
            path,
            problem: format!(
                "the restored store's content hash is {hash}, but the manifest says {}",
                base.content_hash
            ),
        });
    }
    Ok(copied)
}

/// Apply archived entries after the base up to `target` to the store in
/// `data_dir`. Returns (entries replayed, last index, last command time,
/// first index left out).
async fn replay(
    c: &Catalog,
    base: &BaseManifest,
    ids: &Identities,
    data_dir: &Path,
    target: Target,
) -> Result<(u64, Option<u64>, Option<i64>, Option<u64>), BackupError> {
    let mut sm = StateMachineStore::open(data_dir)?;
    let mut next = base.last_log_index.map(|i| i + 1).unwrap_or(0);
    let mut replayed = 0u64;
    let mut last_index = base.last_log_index;
    let mut last_ms = None;
    let mut stopped = None;
    let mut batch: Vec<Entry> = Vec::with_capacity(REPLAY_BATCH_MAX);
    'segments: for s in &c.segments {
        if s.last_index < next {
            continue;
        }
        if s.first_index > next {
            break;
        }
        if let Target::Index(i) = target {
            if next > i {
                break;
            }
        }
        for e in read_segment(&c.segment_path(s), s, ids)? {
            let idx = e.log_id.index;
            if idx < next {
                continue;
            }
            assert_eq!(idx, next, "segments chain without gaps here");
            let stop = match (target, &e.payload) {
                (Target::Index(i), _) => idx > i,
                (Target::Time(t), EntryPayload::Normal(cmd)) => cmd.time_ms()? > t,
                _ => false,
            };
            if stop {
                stopped = Some(idx);
                break 'segments;
            }
            if let EntryPayload::Normal(cmd) = &e.payload {
                last_ms = Some(cmd.time_ms()?);
            }
            batch.push(e);
            next = idx + 1;
            last_index = Some(idx);
            replayed += 1;
            if batch.len() >= REPLAY_BATCH_MAX {
                sm.apply(std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        sm.apply(batch).await?;
    }
    if let Target::Index(i) = target {
        if last_index.is_none_or(|l| l < i) {
            return Err(BackupError::Invalid(format!(
                "the archive reaches index {last_index:?} from this base, not {i}; the nearest point is {last_index:?} (run `hale backup list`)"
            )));
        }
    }
    Ok((replayed, last_index, last_ms, stopped))
}

/// Restore the backup in `from` into the new directory `data_dir`, to
/// `target`, as a store whose raft state is left as the backup had it (call
/// [`reform`] to make it a new cluster).
pub async fn restore(
    from: &Path,
    ids: &Identities,
    data_dir: &Path,
    target: Target,
) -> Result<RestoreReport, BackupError> {
    let started = std::time::Instant::now();
    let c = Catalog::load(from)?;
    let base = choose_base(&c, target)?.clone();
    let plain_bytes = restore_base(&c, &base, ids, data_dir)?;
    let (entries_replayed, last_log_index, last_command_ms, stopped_before_index) =
        replay(&c, &base, ids, data_dir, target).await?;
    let (_, content_hash) = hale_store::content_hash_at(data_dir)?;
    Ok(RestoreReport {
        base_file: base.file.clone(),
        base_last_log_index: base.last_log_index,
        entries_replayed,
        last_log_index,
        last_command_ms,
        stopped_before_index,
        content_hash,
        plain_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Make a restored directory a new cluster of one (node `id`).
pub async fn reform(data_dir: &Path, id: u64, site: &str) -> Result<(), BackupError> {
    let me = hale_raft::HaleNode {
        raft_addr: String::new(),
        api_url: String::new(),
        site: site.to_string(),
    };
    hale_raft::state_machine::reform_single(data_dir, id, me).await?;
    Ok(())
}

/// Prove the newest base restorable: restore it into scratch under
/// `scratch_parent`, compare its content hash with its manifest, decrypt and
/// decode every archive segment after it, and, when an older base exists,
/// replay from it through the archive to the newest base's index and compare
/// content hashes (which proves the archive too). The outcome is recorded in
/// `from/verified/`, failed or not.
pub async fn verify(from: &Path, ids: &Identities, scratch_parent: &Path) -> Result<VerifyRecord, BackupError> {
    let started = std::time::Instant::now();
    let c = Catalog::load(from)?;
    let base = c
        .newest_base()
        .cloned()
        .ok_or_else(|| BackupError::Invalid(format!("{} holds no base backup to verify", from.display())))?;
    let mut problems: Vec<String> = Vec::new();
    let mut segments_checked = 0u64;
    let mut replayed_from_index = None;
    let scratch = Scratch::under(scratch_parent, "verify");
    match restore_base(&c, &base, ids, &scratch.0.join("newest")) {
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }
    let from_index = base.last_log_index.map(|i| i + 1).unwrap_or(0);
    // Nothing archived after the base yet: the restorable point is the base itself.
    let archive_last_index = c.archive_reach(from_index).or(base.last_log_index);
    for s in c.segments.iter().filter(|s| s.last_index >= from_index) {
        match read_segment(&c.segment_path(s), s, ids) {
            Ok(_) => segments_checked += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    // The newest older base the archive connects to the newest base.
    let older = c.bases.iter().rev().find(|b| {
        b.last_log_index < base.last_log_index
            && c.archive_reach(b.last_log_index.map(|i| i + 1).unwrap_or(0)) >= base.last_log_index
    });
    if let (Some(older), Some(to)) = (older, base.last_log_index) {
        let dir = scratch.0.join("replayed");
        let outcome = async {
            restore_base(&c, older, ids, &dir)?;
            replay(&c, older, ids, &dir, Target::Index(to)).await?;
            Ok::<String, BackupError>(hale_store::content_hash_at(&dir)?.1)
        }
        .await;
        match outcome {
            Ok(h) if h == base.content_hash => replayed_from_index = older.last_log_index,
            Ok(h) => problems.push(format!(
                "replaying the archive from the base at index {:?} to {to} gave content hash {h}, but the base at {to} has {}",
                older.last_log_index, base.content_hash
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let record = VerifyRecord {
        format: VERIFY_FORMAT.into(),
        verified_ms: now_ms(),
        ok: problems.is_empty(),
        base_file: base.file.clone(),
        base_last_log_index: base.last_log_index,
        content_hash: base.content_hash.clone(),
        segments_checked,
        archive_last_index,
        replayed_from_index,
        problems,
        seconds: started.elapsed().as_secs_f64(),
    };
    let dir = from.join(VERIFIED_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = stem("verify", record.verified_ms as u64, base.last_log_index.unwrap_or(0));
    write_json_new(&dir.join(format!("{name}.json")), &record)?;
    Ok(record)
}

/// What `prune` removed.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub bases_removed: u64,
    pub segments_removed: u64,
    pub records_removed: u64,
    pub bytes_removed: u64,
}

/// Verification records kept by `prune`.
pub const VERIFY_RECORDS_KEPT: usize = 100;

/// Keep the newest `keep` base backups and the archive from the oldest kept
/// one on; remove the rest. A separate step, run by whoever may delete in the
/// backup directory (the node itself needs only to create files there).
pub fn prune(from: &Path, keep: usize) -> Result<PruneReport, BackupError> {
    if keep == 0 {
        return Err(BackupError::Invalid(
            "--keep 0 would remove every backup; keep at least 1".into(),
        ));
    }
    let c = Catalog::load(from)?;
    let mut r = PruneReport::default();
    let mut bases = c.bases.clone();
    bases.sort_by_key(|b| (b.created_ms, b.last_log_index));
    if bases.len() <= keep {
        return Ok(r);
    }
    let (old, kept) = bases.split_at(bases.len() - keep);
    let floor = kept.iter().map(|b| b.last_log_index.unwrap_or(0)).min().unwrap_or(0);
    let remove = |data: PathBuf, r: &mut PruneReport| -> Result<(), BackupError> {
        let json = data.with_extension("").with_extension("json");
        // The manifest first: a data file without one is ignored, never half-listed.
        std::fs::remove_file(&json).map_err(io(&json))?;
        if let Ok(m) = std::fs::metadata(&data) {
            r.bytes_removed += m.len();
        }
        match std::fs::remove_file(&data) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&data)(e)),
        }
    };
    for b in old {
        remove(c.base_path(b), &mut r)?;
        r.bases_removed += 1;
    }
    for s in c.segments.iter().filter(|s| s.last_index <= floor) {
        remove(c.segment_path(s), &mut r)?;
        r.segments_removed += 1;
    }
    if c.verified.len() > VERIFY_RECORDS_KEPT {
        let dir = from.join(VERIFIED_DIR);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        names.sort();
        for p in &names[..names.len().saturating_sub(VERIFY_RECORDS_KEPT)] {
            std::fs::remove_file(p).map_err(io(p))?;
            r.records_removed += 1;
        }
    }
    Ok(r)
}
