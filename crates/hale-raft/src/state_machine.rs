//! The raft state machine: Hale's SQLite store, plus snapshots that are
//! SQLite files.
//!
//! - `apply` hands committed entries to [`hale_store::StateMachine::apply_entries`]
//!   in one SQLite transaction, which also records the raft log id and the
//!   membership they reach, so state and "how far it got" commit together.
//! - A snapshot is a consistent copy of `hale.db` made with SQLite's online
//!   backup API on a separate read connection (writers keep applying). It is
//!   a complete, openable database: installing it on a lagging or new node is
//!   "copy these pages in", and an operator can open it with `sqlite3`.
//! - The store commits without fsync ([`Durability::LogIsDurable`]): the raft
//!   log is the durable record. After a power cut the store may be behind the
//!   log; openraft re-applies committed entries, and if the store fell behind
//!   the newest snapshot (whose log entries may be purged) the node restores
//!   that snapshot first at open.

use crate::types::{
    Entry, HaleNode, LogId, NodeId, Payload, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use hale_store::command::Command;
use hale_store::{meta_get, meta_put, Durability, StateMachine};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

pub const SNAPSHOT_DIR: &str = "snapshots";
/// Snapshots kept on disk (the newest is served; one older survives a crash mid-build).
pub const SNAPSHOTS_KEPT_MAX: usize = 2;

const KEY_APPLIED: &str = "raft_applied";
const KEY_MEMBERSHIP: &str = "raft_membership";

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())),
    }
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(e.to_string())),
    }
}

struct Inner {
    dir: PathBuf,
    snap_dir: PathBuf,
    sm: Mutex<StateMachine>,
    /// What the store has applied, cached (also in its meta table).
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    current: Mutex<Option<SnapshotMeta>>,
}

/// openraft's view of the node's store. Cloning shares it.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

/// What a store has applied: the raft log id it reached and the membership
/// in force there (both kept in its meta table, committed with the state).
pub fn read_applied(
    conn: &hale_store::rusqlite::Connection,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let applied = match meta_get(conn, KEY_APPLIED).map_err(|e| sm_err(ErrorVerb::Read, e))? {
        Some(v) => serde_json::from_value(v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => None,
    };
    let membership = match meta_get(conn, KEY_MEMBERSHIP).map_err(|e| sm_err(ErrorVerb::Read, e))? {
        Some(v) => serde_json::from_value(v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Run blocking store work off the async threads. A panic there means an
/// invariant of the store failed: stop the process rather than run on corrupt.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // The runtime is shutting down: nothing more will be applied or acknowledged.
        Err(e) if e.is_cancelled() => std::future::pending().await,
        Err(e) => {
            tracing::error!(error = %e, "state machine task failed; aborting so the node restarts from its durable log");
            std::process::abort();
        }
    }
}

impl StateMachineStore {
    /// Open the store in `dir`. If it is behind the newest local snapshot
    /// (possible only after a power cut), restore that snapshot first.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StorageError> {
        let snap_dir = dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snap_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // Half-received or half-built snapshots from before a crash.
        for f in std::fs::read_dir(&snap_dir)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .flatten()
        {
            let name = f.file_name().to_string_lossy().to_string();
            if name.starts_with("incoming-") || name.starts_with("tmp-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let mut sm = StateMachine::open_with(dir, Durability::LogIsDurable).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        if sm.applied_any()
            && meta_get(sm.conn(), KEY_APPLIED)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?
                .is_none()
        {
            return Err(sm_err(
                ErrorVerb::Read,
                format!(
                    "{} holds a store written without a raft log (an older single-node Hale); export it with that version and import it into a new data directory",
                    dir.display()
                ),
            ));
        }
        let current = newest_snapshot(&snap_dir)?;
        let mut applied = read_applied(sm.conn())?;
        if let Some(meta) = &current {
            if meta.last_log_id > applied.0 {
                tracing::warn!(snapshot = %meta.snapshot_id, store_applied = ?applied.0, "the store is behind its newest snapshot (power cut?); restoring the snapshot");
                sm.restore_from(&snapshot_path(&snap_dir, &meta.snapshot_id))
                    .map_err(|e| snap_err(ErrorVerb::Read, e))?;
                applied = read_applied(sm.conn())?;
            }
        }
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                snap_dir,
                sm: Mutex::new(sm),
                applied: Mutex::new(applied),
                current: Mutex::new(current),
            }),
        })
    }

    /// The last log index applied to the store (0 before anything).
    pub fn applied_index(&self) -> u64 {
        self.inner.applied.lock().0.map(|l| l.index).unwrap_or(0)
    }

    /// The id of the last log entry applied to the store. Unlike openraft's
    /// metrics, it is current the moment an apply returns (before any client
    /// hears that its write is done).
    pub fn applied_log_id(&self) -> Option<LogId> {
        self.inner.applied.lock().0
    }

    pub fn content_hash(&self) -> Result<String, hale_store::StoreError> {
        self.inner.sm.lock().content_hash()
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// Copy a consistent image of the store in `data_dir` (running or not) to
/// `dest_dir/hale.db` and say what it reflects. The same online copy as a
/// snapshot: one read transaction on a connection of its own.
pub fn copy_store(data_dir: &Path, dest_dir: &Path) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    std::fs::create_dir_all(dest_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let dest = dest_dir.join(hale_store::DB_FILE);
    StateMachine::backup_to(data_dir, &dest).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let conn = hale_store::db::open_rw(&dest).map_err(|e| snap_err(ErrorVerb::Read, e))?;
    read_applied(&conn)
}

/// Make the store in `dir` (restored from a backup, with no raft log beside
/// it) the first node of a new cluster: the membership it records becomes
/// this one node as the only voter, and the log gets a vote in the term of
/// the last applied entry, so the node's first election starts above every
/// term in its state. The old cluster's members are forgotten on purpose: a
/// restore after ransomware or a bad bulk update must not rejoin the cluster
/// that holds the damage. Others join with `hale cluster add`.
pub async fn reform_single(dir: &Path, id: NodeId, me: HaleNode) -> Result<Option<LogId>, StorageError> {
    let log = dir.join(crate::log_store::LOG_FILE);
    if log.exists() {
        return Err(sm_err(
            ErrorVerb::Write,
            format!(
                "{} already has a raft log; reform a cluster only from a freshly restored store",
                dir.display()
            ),
        ));
    }
    let applied = {
        let sm = StateMachine::open_with(dir, Durability::Fsync).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let (applied, _) = read_applied(sm.conn())?;
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([id])],
            std::collections::BTreeMap::from([(id, me)]),
        );
        let stored = StoredMembership::new(applied, membership);
        let json = serde_json::to_value(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        meta_put(sm.conn(), KEY_MEMBERSHIP, &json).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        applied
    };
    let mut store = crate::log_store::LogStore::open(dir)?;
    let term = applied.map(|l| l.leader_id.term).unwrap_or(0);
    openraft::storage::RaftLogStorage::save_vote(&mut store, &crate::types::Vote::new(term, id)).await?;
    Ok(applied)
}

fn snapshot_path(snap_dir: &Path, id: &str) -> PathBuf {
    snap_dir.join(format!("{id}.db"))
}

fn meta_path(snap_dir: &Path, id: &str) -> PathBuf {
    snap_dir.join(format!("{id}.json"))
}

/// The newest complete snapshot: its `.json` is written last, so a snapshot
/// with metadata is whole.
fn newest_snapshot(snap_dir: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    let mut metas = list_snapshots(snap_dir)?;
    Ok(metas.pop())
}

fn list_snapshots(snap_dir: &Path) -> Result<Vec<SnapshotMeta>, StorageError> {
    let mut metas = Vec::new();
    for f in std::fs::read_dir(snap_dir)
        .map_err(|e| snap_err(ErrorVerb::Read, e))?
        .flatten()
    {
        let p = f.path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let meta: SnapshotMeta = serde_json::from_slice(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        if snapshot_path(snap_dir, &meta.snapshot_id).exists() {
            metas.push(meta);
        }
    }
    metas.sort_by(|a, b| {
        a.last_log_id
            .cmp(&b.last_log_id)
            .then(a.snapshot_id.cmp(&b.snapshot_id))
    });
    Ok(metas)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Record a finished snapshot file under its id, then drop old ones.
fn publish_snapshot(snap_dir: &Path, tmp: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
    std::fs::rename(tmp, snapshot_path(snap_dir, &meta.snapshot_id))?;
    let json_tmp = snap_dir.join(format!("tmp-{}.json", meta.snapshot_id));
    {
        let mut f = std::fs::File::create(&json_tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(meta).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&json_tmp, meta_path(snap_dir, &meta.snapshot_id))?;
    fsync_dir(snap_dir)?;
    let all = list_snapshots(snap_dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    if all.len() > SNAPSHOTS_KEPT_MAX {
        for old in &all[..all.len() - SNAPSHOTS_KEPT_MAX] {
            let _ = std::fs::remove_file(meta_path(snap_dir, &old.snapshot_id));
            let _ = std::fs::remove_file(snapshot_path(snap_dir, &old.snapshot_id));
        }
    }
    Ok(())
}

/// Builds snapshots from a consistent copy of the store.
pub struct SnapshotBuilder {
    inner: Arc<Inner>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let inner = self.inner.clone();
        let meta = blocking(move || -> Result<SnapshotMeta, StorageError> {
            let tmp = inner.snap_dir.join(format!("tmp-{}.db", uuid::Uuid::new_v4().simple()));
            StateMachine::backup_to(&inner.dir, &tmp).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            // The copy records how far it got: read it back from the copy itself.
            let conn = hale_store::db::open_rw(&tmp).map_err(|e| snap_err(ErrorVerb::Read, e))?;
            let (last_log_id, last_membership) = read_applied(&conn)?;
            drop(conn);
            let snapshot_id = match last_log_id {
                Some(l) => format!(
                    "{:020}-{:020}-{}",
                    l.leader_id.term,
                    l.index,
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                None => format!("empty-{}", uuid::Uuid::new_v4().simple()),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            publish_snapshot(&inner.snap_dir, &tmp, &meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            *inner.current.lock() = Some(meta.clone());
            Ok(meta)
        })
        .await?;
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "built snapshot");
        let file = tokio::fs::File::open(snapshot_path(&self.inner.snap_dir, &meta.snapshot_id))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.inner.applied.lock().clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let mut membership = None;
        let mut payloads: Vec<(LogId, Option<Payload>)> = Vec::with_capacity(entries.len());
        for e in entries {
            match e.payload {
                EntryPayload::Blank => payloads.push((e.log_id, None)),
                EntryPayload::Normal(p) => payloads.push((e.log_id, Some(p))),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m));
                    payloads.push((e.log_id, None));
                }
            }
        }
        let inner = self.inner.clone();
        let out = blocking(move || -> Result<Vec<Response>, StorageError> {
            // Each command is decoded here, once, from the bytes its proposer
            // encoded: the same bytes on every replica, so the same command.
            let mut cmds: Vec<(u64, Option<Command>)> = Vec::with_capacity(payloads.len());
            for (id, p) in payloads {
                let c = match p {
                    Some(p) => Some(p.decode().map_err(|e| StorageError::IO {
                        source: StorageIOError::new(
                            ErrorSubject::Apply(id),
                            ErrorVerb::Read,
                            AnyError::error(format!("log entry {} does not decode: {e}", id.index)),
                        ),
                    })?),
                    None => None,
                };
                cmds.push((id.index, c));
            }
            let refs: Vec<(u64, Option<&Command>)> = cmds.iter().map(|(i, c)| (*i, c.as_ref())).collect();
            let applied_json = serde_json::to_value(Some(last)).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let membership_json = match &membership {
                Some(m) => Some(serde_json::to_value(m).map_err(|e| sm_err(ErrorVerb::Write, e))?),
                None => None,
            };
            let mut sm = inner.sm.lock();
            let outcomes = sm
                .apply_entries(&refs, |tx| {
                    meta_put(tx, KEY_APPLIED, &applied_json)?;
                    if let Some(m) = &membership_json {
                        meta_put(tx, KEY_MEMBERSHIP, m)?;
                    }
                    Ok(())
                })
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let mut applied = inner.applied.lock();
            assert!(
                applied.0 < Some(last),
                "applied index moves backwards: {:?} then {last}",
                applied.0
            );
            applied.0 = Some(last);
            if let Some(m) = membership {
                applied.1 = m;
            }
            Ok(outcomes.into_iter().map(Response).collect())
        })
        .await?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            inner: self.inner.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // One snapshot is received at a time: a transfer that was abandoned (the
        // leader changed mid-stream) leaves its file behind; do not let them pile up.
        for f in std::fs::read_dir(&self.inner.snap_dir).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with("incoming-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let path = self
            .inner
            .snap_dir
            .join(format!("incoming-{}.db", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let snap_dir = self.inner.snap_dir.clone();
        // Copy the received bytes into a file of our own: the handle may be any file.
        let tmp = snap_dir.join(format!("tmp-{}.db", uuid::Uuid::new_v4().simple()));
        {
            snapshot.flush().await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
            snapshot
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
            let mut out = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            tokio::io::copy(&mut *snapshot, &mut out)
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            out.sync_all().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        }
        drop(snapshot);
        let inner = self.inner.clone();
        let meta = meta.clone();
        blocking(move || -> Result<(), StorageError> {
            // The copy must describe itself as the metadata says.
            {
                let conn = hale_store::db::open_rw(&tmp).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                let (last, _) = read_applied(&conn)?;
                assert_eq!(
                    last, meta.last_log_id,
                    "received snapshot {} does not match its metadata",
                    meta.snapshot_id
                );
            }
            publish_snapshot(&inner.snap_dir, &tmp, &meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let mut sm = inner.sm.lock();
            sm.restore_from(&snapshot_path(&inner.snap_dir, &meta.snapshot_id))
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            *inner.applied.lock() = read_applied(sm.conn())?;
            *inner.current.lock() = Some(meta.clone());
            for f in std::fs::read_dir(&inner.snap_dir).into_iter().flatten().flatten() {
                if f.file_name().to_string_lossy().starts_with("incoming-") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
            tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "installed snapshot");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(meta) = self.inner.current.lock().clone() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(snapshot_path(&self.inner.snap_dir, &meta.snapshot_id))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
