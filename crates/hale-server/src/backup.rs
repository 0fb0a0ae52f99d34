//! Backups on a running node (`[backup]`): the log archive every
//! `archive_interval_ms`, a base backup every `every_s` (and whenever the
//! archive needs one to continue from), a verification every
//! `verify_every_s`, and what `/ops/status` and `/metrics` say about them.
//!
//! The node only ever creates files in the backup directory; pruning is a
//! separate step (`hale backup prune`) run by someone allowed to delete.
//! Architecture Invariant: file formats, restore and verification live in
//! `hale_backup`; this module only schedules them and reports.

use crate::App;
use hale_backup::archive::{Archiver, Step};
use hale_backup::{Catalog, Recipients};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Shortest allowed interval between scheduled base backups.
pub const EVERY_S_MIN: u64 = 60;
/// Segments one archive pass writes at most before yielding.
const SEGMENTS_PER_PASS_MAX: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// The backup directory (off when unset). Put it on other storage than
    /// the data directory, ideally write-once (see README, Backups).
    pub dir: Option<PathBuf>,
    /// age recipients (`age1...` public keys) every backup file is encrypted to.
    pub recipients: Vec<String>,
    /// Seconds between base backups; 0: only when the archive needs a base.
    pub every_s: u64,
    /// Copy the committed raft log into the archive continuously.
    pub archive: bool,
    pub archive_interval_ms: u64,
    /// Seconds between verifications of the newest backup; 0: off. Needs
    /// `identity_file`.
    pub verify_every_s: u64,
    /// The age identity (secret key file) verification decrypts with.
    pub identity_file: Option<PathBuf>,
    /// After each base backup, keep the newest `keep` bases and the archive
    /// from the oldest kept one, deleting the rest (0: never delete; prune
    /// with `hale backup prune` as another user, for write-once storage).
    pub keep: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            dir: None,
            recipients: Vec::new(),
            every_s: 86_400,
            archive: true,
            archive_interval_ms: 1_000,
            verify_every_s: 0,
            identity_file: None,
            keep: 0,
        }
    }
}

/// Checked at start: a node with a `[backup] dir` refuses to start with
/// settings that could never produce a usable backup.
pub fn validate(s: &BackupSettings) -> Result<(), String> {
    let Some(dir) = &s.dir else { return Ok(()) };
    Recipients::parse(&s.recipients).map_err(|e| format!("[backup] recipients: {e}"))?;
    if s.every_s != 0 && s.every_s < EVERY_S_MIN {
        return Err(format!(
            "[backup] every_s = {} is below {EVERY_S_MIN}; use 0 (bases only when the archive needs one) or at least {EVERY_S_MIN}",
            s.every_s
        ));
    }
    if !(100..=3_600_000).contains(&s.archive_interval_ms) {
        return Err("[backup] archive_interval_ms must be between 100 and 3600000".into());
    }
    if s.verify_every_s > 0 {
        let Some(f) = &s.identity_file else {
            return Err(
                "[backup] verify_every_s needs identity_file (an age secret key of one of the recipients)".into(),
            );
        };
        hale_backup::read_identities(f).map_err(|e| format!("[backup] identity_file: {e}"))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("[backup] dir {}: {e}", dir.display()))?;
    Ok(())
}

#[derive(Debug, Default, Clone)]
struct Inner {
    last_backup_ms: Option<i64>,
    last_backup_index: Option<u64>,
    last_backup_bytes: Option<u64>,
    last_backup_seconds: Option<f64>,
    last_verified_ms: Option<i64>,
    last_verify_ok: Option<bool>,
    last_verify_problems: Vec<String>,
    archived_index: Option<u64>,
    last_error: Option<String>,
}

/// What this node knows of its backups (status and metrics).
#[derive(Default)]
pub struct BackupState {
    inner: Mutex<Inner>,
}

impl BackupState {
    fn load_catalog(&self, c: &Catalog) {
        let mut s = self.inner.lock();
        if let Some(b) = c.newest_base() {
            s.last_backup_ms = Some(b.created_ms);
            s.last_backup_index = b.last_log_index;
            s.last_backup_bytes = Some(b.encrypted_bytes);
        }
        if let Some(v) = c.verified.last() {
            s.last_verified_ms = Some(v.verified_ms);
            s.last_verify_ok = Some(v.ok);
            s.last_verify_problems = v.problems.clone();
        }
        s.archived_index = c.archive_last_index().or(s.archived_index);
    }
}

fn age_s(now_ms: i64, t: Option<i64>) -> Option<i64> {
    t.map(|t| ((now_ms - t).max(0)) / 1000)
}

/// The `backup` section of `/ops/status`.
pub fn status_section(app: &App) -> Value {
    let Some(dir) = &app.cfg.backup.dir else {
        return json!({"configured": false});
    };
    let s = app.backup.inner.lock().clone();
    let now = crate::now_ms();
    let applied = app.proposer.last_applied();
    json!({
        "configured": true,
        "dir": dir.display().to_string(),
        "archive": app.cfg.backup.archive,
        "lastBackupAgeS": age_s(now, s.last_backup_ms),
        "lastBackupIndex": s.last_backup_index,
        "lastBackupBytes": s.last_backup_bytes,
        "lastBackupSeconds": s.last_backup_seconds,
        "lastVerifiedAgeS": age_s(now, s.last_verified_ms),
        "lastVerifyOk": s.last_verify_ok,
        "lastVerifyProblems": s.last_verify_problems,
        "archiveLastIndex": s.archived_index,
        "archiveLagEntries": s.archived_index.map(|a| applied.saturating_sub(a)),
        "lastError": s.last_error,
    })
}

/// `/metrics` gauges.
pub fn gauges(app: &App) -> Vec<(String, &'static str, f64)> {
    if app.cfg.backup.dir.is_none() {
        return Vec::new();
    }
    let s = app.backup.inner.lock().clone();
    let now = crate::now_ms();
    let mut g = Vec::new();
    if let Some(a) = age_s(now, s.last_backup_ms) {
        g.push((
            "hale_backup_last_age_seconds".into(),
            "Age of the newest base backup.",
            a as f64,
        ));
    }
    if let Some(a) = age_s(now, s.last_verified_ms) {
        g.push((
            "hale_backup_verified_age_seconds".into(),
            "Age of the last verification (restore into scratch and compare) of the newest backup.",
            a as f64,
        ));
        g.push((
            "hale_backup_last_verify_ok".into(),
            "1 when the last verification passed.",
            if s.last_verify_ok == Some(true) { 1.0 } else { 0.0 },
        ));
    }
    if let Some(a) = s.archived_index {
        g.push((
            "hale_backup_archive_lag_entries".into(),
            "Applied log entries not yet in the log archive.",
            app.proposer.last_applied().saturating_sub(a) as f64,
        ));
    }
    g
}

/// Start the archive, base and verification schedules (when `[backup] dir` is set).
pub fn spawn(app: Arc<App>) {
    let Some(dir) = app.cfg.backup.dir.clone() else { return };
    let recipients = match Recipients::parse(&app.cfg.backup.recipients) {
        Ok(r) => r,
        Err(e) => {
            // validate() refused this at start; only a test could get here.
            tracing::error!(error = %e, "backups are off");
            return;
        }
    };
    if let Ok(c) = Catalog::load(&dir) {
        app.backup.load_catalog(&c);
    }
    let data = app.cfg.data.clone();
    tokio::spawn(archive_and_base_loop(
        app.clone(),
        dir.clone(),
        data.clone(),
        recipients,
    ));
    if app.cfg.backup.verify_every_s > 0 {
        tokio::spawn(verify_loop(app, dir, data));
    }
}

fn take_base(app: &App, data: &std::path::Path, dir: &std::path::Path, r: &Recipients) -> Result<(), String> {
    let started = std::time::Instant::now();
    let m = hale_backup::base::take(data, dir, r).map_err(|e| e.to_string())?;
    let mut s = app.backup.inner.lock();
    s.last_backup_ms = Some(m.created_ms);
    s.last_backup_index = m.last_log_index;
    s.last_backup_bytes = Some(m.encrypted_bytes);
    s.last_backup_seconds = Some(started.elapsed().as_secs_f64());
    drop(s);
    if app.cfg.backup.keep > 0 {
        let r = hale_backup::restore::prune(dir, app.cfg.backup.keep).map_err(|e| format!("pruning: {e}"))?;
        if r.bases_removed + r.segments_removed > 0 {
            tracing::info!(
                bases = r.bases_removed,
                segments = r.segments_removed,
                bytes = r.bytes_removed,
                keep = app.cfg.backup.keep,
                "pruned old backups"
            );
        }
    }
    Ok(())
}

/// One pass: archive what was applied (taking a base when the archive needs
/// one), then a scheduled base if one is due.
fn pass(
    app: &App,
    archiver: &mut Option<Archiver>,
    data: &std::path::Path,
    dir: &std::path::Path,
    r: &Recipients,
) -> Result<(), String> {
    let now = crate::now_ms();
    let due = app.cfg.backup.every_s > 0
        && app
            .backup
            .inner
            .lock()
            .last_backup_ms
            .is_none_or(|t| now - t >= app.cfg.backup.every_s as i64 * 1000);
    if due {
        take_base(app, data, dir, r)?;
        if let Some(a) = archiver.as_mut() {
            a.reload().map_err(|e| e.to_string())?;
        }
    }
    if !app.cfg.backup.archive {
        return Ok(());
    }
    if archiver.is_none() {
        *archiver = Some(Archiver::open(data, dir, r.clone()).map_err(|e| e.to_string())?);
    }
    let a = archiver.as_mut().expect("opened above");
    for _ in 0..SEGMENTS_PER_PASS_MAX {
        match a.step(app.proposer.last_applied()).map_err(|e| e.to_string())? {
            Step::Idle => break,
            Step::Wrote(m) => app.backup.inner.lock().archived_index = Some(m.last_index),
            Step::NeedsBase { next, log_first } => {
                tracing::info!(
                    ?next,
                    ?log_first,
                    "the log archive needs a base backup to continue from; taking one"
                );
                take_base(app, data, dir, r)?;
                a.reload().map_err(|e| e.to_string())?;
                if a.next_index().is_none() {
                    return Err("the archive has no base after taking one".into());
                }
            }
        }
    }
    Ok(())
}

async fn archive_and_base_loop(app: Arc<App>, dir: PathBuf, data: PathBuf, r: Recipients) {
    let interval = std::time::Duration::from_millis(app.cfg.backup.archive_interval_ms);
    let mut archiver: Option<Archiver> = None;
    loop {
        if app.stopping.load(Ordering::Acquire) {
            return;
        }
        let (a2, d2, dir2, r2) = (app.clone(), data.clone(), dir.clone(), r.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let out = pass(&a2, &mut archiver, &d2, &dir2, &r2);
            (archiver, out)
        })
        .await;
        match outcome {
            Ok((a, res)) => {
                archiver = a;
                let mut s = app.backup.inner.lock();
                match res {
                    Ok(()) => s.last_error = None,
                    Err(e) => {
                        if s.last_error.as_deref() != Some(e.as_str()) {
                            tracing::error!(error = %e, dir = %dir.display(), "backup pass failed; retrying");
                        }
                        s.last_error = Some(e);
                        // Start over from what the directory holds.
                        archiver = None;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "backup pass panicked");
                archiver = None;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn verify_loop(app: Arc<App>, dir: PathBuf, data: PathBuf) {
    let every_ms = app.cfg.backup.verify_every_s as i64 * 1000;
    loop {
        if app.stopping.load(Ordering::Acquire) {
            return;
        }
        let last = app.backup.inner.lock().last_verified_ms;
        let due_in_ms = last.map_or(0, |t| (t + every_ms - crate::now_ms()).max(0));
        if due_in_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(due_in_ms.min(60_000) as u64)).await;
            continue;
        }
        if app.backup.inner.lock().last_backup_ms.is_none() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        let Some(idf) = app.cfg.backup.identity_file.clone() else {
            return;
        };
        let (dir2, data2) = (dir.clone(), data.clone());
        let handle = tokio::runtime::Handle::current();
        let res = tokio::task::spawn_blocking(move || -> Result<hale_backup::VerifyRecord, String> {
            let ids = hale_backup::read_identities(&idf).map_err(|e| e.to_string())?;
            handle
                .block_on(hale_backup::restore::verify(&dir2, &ids, &data2))
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("verification panicked: {e}")));
        let mut s = app.backup.inner.lock();
        match res {
            Ok(v) => {
                if v.ok {
                    tracing::info!(index = ?v.base_last_log_index, seconds = v.seconds, "backup verified");
                } else {
                    tracing::error!(problems = ?v.problems, "backup verification FAILED");
                }
                s.last_verified_ms = Some(v.verified_ms);
                s.last_verify_ok = Some(v.ok);
                s.last_verify_problems = v.problems;
            }
            Err(e) => {
                tracing::error!(error = %e, "backup verification could not run");
                s.last_verified_ms = Some(crate::now_ms());
                s.last_verify_ok = Some(false);
                s.last_verify_problems = vec![e];
            }
        }
    }
}
