//! Base backups: an online, consistent image of a node's store, encrypted.

use crate::catalog::{stem, BaseManifest, BASE_DIR, BASE_FORMAT};
use crate::files::{create_new, fsync_dir, write_json_new, HashingWriter, Scratch};
use crate::{io, now_ms, BackupError, Recipients};
use std::path::Path;

/// Entries before a base's index searched for its last command time.
const COMMAND_TIME_LOOKBACK: u64 = 256;

/// The greatest command time among the log entries just up to `index`.
fn last_command_ms(data_dir: &Path, index: u64) -> Result<Option<i64>, BackupError> {
    let from = index.saturating_sub(COMMAND_TIME_LOOKBACK - 1);
    let rows = hale_raft::log_store::LogStore::read_raw(data_dir, from, index, COMMAND_TIME_LOOKBACK, usize::MAX)?;
    let mut best = None;
    // Rows from the log's very start with no command among them: the image holds no command.
    if rows.first().is_some_and(|(i, _)| *i <= 1) && from <= 1 {
        best = Some(0);
    }
    for (i, bytes) in rows {
        if let openraft::EntryPayload::Normal(cmd) = hale_raft::log_store::decode_entry(i, &bytes)?.payload {
            best = best.max(Some(cmd.time_ms()?));
        }
    }
    Ok(best)
}

/// Take a base backup of the store in `data_dir` (a running node's or a
/// stopped one's) into `to/base/`. The plaintext copy is made inside
/// `data_dir` (same disk, same protection as the store) and removed after
/// it is encrypted; only ciphertext reaches `to`.
pub fn take(data_dir: &Path, to: &Path, recipients: &Recipients) -> Result<BaseManifest, BackupError> {
    if !data_dir.join(hale_store::DB_FILE).exists() {
        return Err(BackupError::Invalid(format!(
            "{} holds no Hale store ({}); give the node's data directory with --data",
            data_dir.display(),
            hale_store::DB_FILE
        )));
    }
    let created_ms = now_ms();
    let scratch = Scratch::under(data_dir, "backup-tmp");
    let (applied, _membership) = hale_raft::state_machine::copy_store(data_dir, &scratch.0)?;
    let (_, content_hash) = hale_store::content_hash_at(&scratch.0)?;
    let plain = scratch.0.join(hale_store::DB_FILE);
    let dir = to.join(BASE_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let index = applied.map(|l| l.index);
    let name = stem("base", index.unwrap_or(0), created_ms as u64);
    let file = format!("{name}.db.age");
    let path = dir.join(&file);
    let out = create_new(&path)?;
    let mut input = std::fs::File::open(&plain).map_err(io(&plain))?;
    let plain_bytes = input.metadata().map_err(io(&plain))?.len();
    let w = recipients
        .encrypt_stream(&mut input, HashingWriter::new(std::io::BufWriter::new(out)))
        .map_err(|e| BackupError::Crypt(e.to_string()))?;
    let (buf, file_sha256, encrypted_bytes) = w.finish();
    let out = buf.into_inner().map_err(|e| io(&path)(e.into_error()))?;
    out.sync_all().map_err(io(&path))?;
    drop(out);
    let manifest = BaseManifest {
        format: BASE_FORMAT.into(),
        created_ms,
        last_log_index: index,
        last_log_term: applied.map(|l| l.leader_id.term).unwrap_or(0),
        last_command_ms: match index {
            Some(i) => last_command_ms(data_dir, i)?,
            None => None,
        },
        content_hash,
        file,
        file_sha256,
        encrypted_bytes,
        plain_bytes,
        recipients: recipients.to_strings(),
        store_keyed: hale_store::db::key_set(),
        hale_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json_new(&dir.join(format!("{name}.json")), &manifest)?;
    fsync_dir(&dir)?;
    tracing::info!(
        index = ?manifest.last_log_index,
        bytes = manifest.encrypted_bytes,
        file = %manifest.file,
        "base backup written"
    );
    Ok(manifest)
}
