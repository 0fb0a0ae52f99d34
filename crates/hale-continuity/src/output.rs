//! Writing packs so that a reader never sees a half-written one.
//!
//! ```text
//! OUT/
//!   current -> packs/000042-20261123T070000Z-QEH-idx81234     (symbolic link)
//!   packs/000041-20261123T064500Z-QEH-idx81100/…
//!   packs/000042-20261123T070000Z-QEH-idx81234/manifest.json, clinic-list.pdf.age, …
//!   .staging-…/                                              (only while writing)
//! ```
//!
//! A pack is written into a staging directory beside `packs/`, every file and
//! the directory are fsynced, the directory is renamed into `packs/`, and
//! then `current` is replaced by renaming a new link over it: `rename(2)` is
//! atomic, so `current` names either the old pack or the new one, each
//! complete. Pack directories are numbered in sequence (not by clock, which
//! can go backwards); the newest `keep` are kept, and the one `current` names
//! is never removed. One writer per output directory.

use crate::manifest::{Manifest, MANIFEST_FILE, MANIFEST_FORMAT};
use crate::{io_err, sha256_hex, ContinuityError, Pack, KEEP_PACKS_MAX};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the link to the newest complete pack.
pub const CURRENT_LINK: &str = "current";
const PACKS_DIR: &str = "packs";
const STAGING_PREFIX: &str = ".staging-";
/// Most bytes read from a manifest.
const MANIFEST_BYTES_MAX: u64 = 1 << 20;

/// Points in [`write_pack`] where a test can stop it, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage {
    /// After the n-th file (0-based) was written and fsynced into staging.
    FileWritten(usize),
    /// After the staging directory was complete and fsynced.
    Staged,
    /// After the pack directory was moved into `packs/`, before `current` switched.
    Published,
}

/// What [`write_pack`] did.
#[derive(Debug, Clone)]
pub struct WrittenPack {
    /// The new pack's directory (what `current` now names).
    pub dir: PathBuf,
    /// Older pack directories removed.
    pub pruned: Vec<PathBuf>,
    /// Old directories that could not be removed (the new pack is current regardless).
    pub prune_failures: Vec<String>,
}

/// The pack `current` names, with its manifest.
#[derive(Debug, Clone)]
pub struct CurrentPack {
    /// The pack directory, resolved once: read every file from here, not via
    /// `current`, which may switch while you read.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

fn mkdir_private(path: &Path) -> Result<(), ContinuityError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path).map_err(io_err("cannot create directory", path))
}

fn fsync_dir(path: &Path) -> Result<(), ContinuityError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync directory", path))
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), ContinuityError> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).map_err(io_err("cannot create", path))?;
    f.write_all(bytes).map_err(io_err("cannot write", path))?;
    f.sync_all().map_err(io_err("cannot fsync", path))
}

/// Sequence number of a pack directory name (`000042-…`).
fn sequence_of(name: &str) -> Option<u64> {
    let (seq, _) = name.split_once('-')?;
    (seq.len() >= 6 && seq.bytes().all(|b| b.is_ascii_digit()))
        .then(|| seq.parse().ok())
        .flatten()
}

/// Pack directories under `packs/`, oldest first.
fn pack_dirs(packs: &Path) -> Result<Vec<(u64, String)>, ContinuityError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(packs).map_err(io_err("cannot list", packs))?;
    for e in entries {
        let e = e.map_err(io_err("cannot list", packs))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(seq) = sequence_of(&name) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push((seq, name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The directory name `current` points at, if any.
fn current_target(out_dir: &Path) -> Option<String> {
    let target = fs::read_link(out_dir.join(CURRENT_LINK)).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(unix)]
fn switch_current(out_dir: &Path, dir_name: &str) -> Result<(), ContinuityError> {
    let tmp = out_dir.join(format!(".{CURRENT_LINK}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let target = Path::new(PACKS_DIR).join(dir_name);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io_err("cannot create link", &tmp))?;
    let link = out_dir.join(CURRENT_LINK);
    fs::rename(&tmp, &link).map_err(io_err("cannot switch", &link))?;
    fsync_dir(out_dir)
}

#[cfg(not(unix))]
fn switch_current(_out_dir: &Path, _dir_name: &str) -> Result<(), ContinuityError> {
    Err(ContinuityError::Unsupported)
}

/// Write `pack` under `out_dir` and make it current atomically; keep the
/// newest `keep` packs (1 to [`KEEP_PACKS_MAX`]).
pub fn write_pack(out_dir: &Path, pack: &Pack, keep: usize) -> Result<WrittenPack, ContinuityError> {
    write_with(out_dir, pack, keep, &mut |_| Ok(()))
}

/// [`write_pack`] that stops at `stage` as if the process had died there
/// (nothing is cleaned up). For tests of the never-half-written guarantee.
#[doc(hidden)]
pub fn write_pack_interrupted(
    out_dir: &Path,
    pack: &Pack,
    keep: usize,
    stage: WriteStage,
) -> Result<WrittenPack, ContinuityError> {
    write_with(out_dir, pack, keep, &mut |s| {
        if s == stage {
            Err(ContinuityError::Interrupted(s))
        } else {
            Ok(())
        }
    })
}

fn write_with(
    out_dir: &Path,
    pack: &Pack,
    keep: usize,
    hook: &mut dyn FnMut(WriteStage) -> Result<(), ContinuityError>,
) -> Result<WrittenPack, ContinuityError> {
    if keep == 0 || keep > KEEP_PACKS_MAX {
        return Err(ContinuityError::InvalidOption(format!(
            "keep must be 1 to {KEEP_PACKS_MAX} packs, got {keep}"
        )));
    }
    // One directory per site: `current` must never switch from one site's pack to another's.
    if let Ok(Some(current)) = current_pack(out_dir) {
        if current.manifest.site != pack.manifest.site {
            return Err(ContinuityError::InvalidOption(format!(
                "{} holds packs for site {}, not {}; give each site its own output directory",
                out_dir.display(),
                current.manifest.site,
                pack.manifest.site
            )));
        }
    }
    let packs = out_dir.join(PACKS_DIR);
    mkdir_private(&packs)?;

    // Staging directories left by a writer that died are incomplete: remove them.
    let entries = fs::read_dir(out_dir).map_err(io_err("cannot list", out_dir))?;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            let _ = fs::remove_dir_all(e.path());
        }
    }

    let existing = pack_dirs(&packs)?;
    let seq = existing.last().map_or(1, |(s, _)| s + 1);
    let dir_name = format!("{seq:06}-{}", pack.dir_name());
    let staging = out_dir.join(format!("{STAGING_PREFIX}{dir_name}"));
    mkdir_private(&staging)?;
    // The manifest goes last, so a staging directory with a manifest has every file.
    for (i, f) in pack.files.iter().enumerate() {
        write_file_synced(&staging.join(&f.name), &f.bytes)?;
        hook(WriteStage::FileWritten(i))?;
    }
    fsync_dir(&staging)?;
    hook(WriteStage::Staged)?;

    let dir = packs.join(&dir_name);
    fs::rename(&staging, &dir).map_err(io_err("cannot move the pack into", &dir))?;
    fsync_dir(&packs)?;
    hook(WriteStage::Published)?;

    switch_current(out_dir, &dir_name)?;

    // Keep the newest `keep`, and whatever `current` names.
    let current = current_target(out_dir);
    let all = pack_dirs(&packs)?;
    let mut pruned = Vec::new();
    let mut prune_failures = Vec::new();
    let cut = all.len().saturating_sub(keep);
    for (_, name) in &all[..cut] {
        if Some(name) == current.as_ref() {
            continue;
        }
        let p = packs.join(name);
        match fs::remove_dir_all(&p) {
            Ok(()) => pruned.push(p),
            Err(e) => prune_failures.push(format!("{}: {e}", p.display())),
        }
    }
    Ok(WrittenPack {
        dir,
        pruned,
        prune_failures,
    })
}

fn read_manifest(dir: &Path) -> Result<Manifest, ContinuityError> {
    let path = dir.join(MANIFEST_FILE);
    let meta = fs::metadata(&path).map_err(io_err("cannot read", &path))?;
    if meta.len() > MANIFEST_BYTES_MAX {
        return Err(ContinuityError::InvalidPack {
            path,
            reason: format!("the manifest is larger than {MANIFEST_BYTES_MAX} bytes"),
        });
    }
    let bytes = fs::read(&path).map_err(io_err("cannot read", &path))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ContinuityError::InvalidPack {
        path: path.clone(),
        reason: format!("the manifest is not valid: {e}"),
    })?;
    if m.format != MANIFEST_FORMAT {
        return Err(ContinuityError::InvalidPack {
            path,
            reason: format!("manifest format {:?}, this build reads {MANIFEST_FORMAT:?}", m.format),
        });
    }
    Ok(m)
}

/// The pack `current` names under `out_dir`, or None when there is none yet.
/// Reads the manifest only; use [`verify_pack`] to check the files.
pub fn current_pack(out_dir: &Path) -> Result<Option<CurrentPack>, ContinuityError> {
    let link = out_dir.join(CURRENT_LINK);
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot read link", &link)(e)),
    };
    let dir = if target.is_absolute() {
        target
    } else {
        out_dir.join(target)
    };
    let manifest = read_manifest(&dir)?;
    Ok(Some(CurrentPack { dir, manifest }))
}

/// Check that every file the manifest in `dir` lists is present with the
/// listed size and SHA-256. Returns the manifest.
pub fn verify_pack(dir: &Path) -> Result<Manifest, ContinuityError> {
    let m = read_manifest(dir)?;
    for f in &m.files {
        let path = dir.join(&f.name);
        if f.name.contains(['/', '\\']) || f.name.starts_with('.') {
            return Err(ContinuityError::InvalidPack {
                path,
                reason: "the manifest names a file outside the pack".into(),
            });
        }
        let bytes = fs::read(&path).map_err(io_err("cannot read", &path))?;
        if bytes.len() as u64 != f.bytes || sha256_hex(&bytes) != f.sha256 {
            return Err(ContinuityError::InvalidPack {
                path,
                reason: "the file's size or SHA-256 differs from the manifest".into(),
            });
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_cases() {
        for (name, want) in [
            ("000042-20261123T070000Z-QEH-idx5", Some(42)),
            ("1234567-x", Some(1_234_567)),
            ("00042-x", None),
            ("abcdef-x", None),
            ("000042", None),
            (".staging-000042-x", None),
        ] {
            assert_eq!(sequence_of(name), want, "sequence_of({name:?})");
        }
    }
}
