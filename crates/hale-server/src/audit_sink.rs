//! Read audit: records queue here and are committed in batches as one
//! `Audit` command, so auditing every read costs a queue push per request.
//!
//! When the cluster cannot commit (a site replica cut off from the data
//! centres, a lost quorum), batches go to a durable spool on local disk
//! (`<data>/audit-spool/`, fsynced) and are committed, oldest first, once the
//! cluster is reachable again. So reads keep being served through an outage
//! and no audit record is lost. Every batch carries an idempotency key, the
//! node id and a per-node sequence number that only grows (reserved on disk
//! in blocks, `SEQ_FILE`), and apply skips a batch whose number it has seen:
//! a batch re-sent after an ambiguous error or a crash between commit and
//! the spool file's removal lands once. Only when the spool is full
//! (`SPOOL_BYTES_MAX`) and the queue is full do readers wait: reads are never
//! served unaudited.

use hale_store::propose::Proposer;
use hale_store::{AuditRecord, CommandKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Audit records per command.
pub const FLUSH_RECORDS_MAX: usize = 4_096;
/// Estimated encoded bytes per command: a batch stays well inside one log
/// entry ([`hale_store::COMMAND_BYTES_MAX`]), so it is never split into parts
/// (a split costs a JSON encoding, staging rows and a reassembly).
pub const FLUSH_BYTES_MAX: usize = hale_store::COMMAND_BYTES_MAX / 2;

/// An upper estimate of one record's share of an encoded command.
fn record_bytes(r: &AuditRecord) -> usize {
    128 + r.actor.user.len()
        + r.actor.role.len()
        + r.rtype.len()
        + r.id.as_ref().map_or(0, String::len)
        + r.patient.as_ref().map_or(0, String::len)
        + 2 * r.detail.len()
        + r.purpose.as_ref().map_or(0, String::len)
}

/// `records` cut, in order, into batches of at most [`FLUSH_BYTES_MAX`]
/// estimated bytes (a record larger than that alone is a batch of its own).
fn batches(records: Vec<AuditRecord>) -> Vec<Vec<AuditRecord>> {
    let mut out: Vec<Vec<AuditRecord>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let n = record_bytes(&r);
        match out.last_mut() {
            Some(b) if bytes + n <= FLUSH_BYTES_MAX => {
                b.push(r);
                bytes += n;
            }
            _ => {
                out.push(vec![r]);
                bytes = n;
            }
        }
    }
    out
}
/// How long the flusher gathers records before committing them.
pub const FLUSH_GATHER_MS: u64 = 10;
/// Delay between attempts to commit spooled batches.
pub const RETRY_DELAY_MS: u64 = 500;
/// Largest spool on disk; past it the flusher retries in memory and readers wait.
pub const SPOOL_BYTES_MAX: u64 = 1024 * 1024 * 1024;
pub const SPOOL_DIR: &str = "audit-spool";
/// Beside the spool directory: the first batch number not yet reserved.
pub const SEQ_FILE: &str = "audit-next-seq";
/// Batch numbers reserved per write of `SEQ_FILE`.
pub const SEQ_BLOCK: u64 = 10_000;

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    spooled: Arc<AtomicU64>,
}

struct Spool {
    dir: PathBuf,
    seq_path: PathBuf,
    /// The next batch number to hand out, and the first one not reserved on disk.
    seq: u64,
    reserved: u64,
}

impl Spool {
    fn open(data: &Path) -> std::io::Result<Spool> {
        let dir = data.join(SPOOL_DIR);
        std::fs::create_dir_all(&dir)?;
        let seq_path = data.join(SEQ_FILE);
        let on_disk: u64 = std::fs::read_to_string(&seq_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        let after_files = Self::files(&dir)?.last().map(|(n, _)| n + 1).unwrap_or(1);
        let seq = on_disk.max(after_files);
        Ok(Spool {
            dir,
            seq_path,
            seq,
            reserved: seq,
        })
    }

    /// A new batch number, greater than any handed out before, across restarts.
    fn next_seq(&mut self) -> std::io::Result<u64> {
        if self.seq >= self.reserved {
            let reserved = self.seq + SEQ_BLOCK;
            let tmp = self.seq_path.with_extension("tmp");
            {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, reserved.to_string().as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &self.seq_path)?;
            if let Some(parent) = self.seq_path.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            self.reserved = reserved;
        }
        let s = self.seq;
        self.seq += 1;
        Ok(s)
    }

    /// Spool files, oldest first.
    fn files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for f in std::fs::read_dir(dir)?.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if let Some(n) = name.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
                out.push((n, f.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// Spool batch `seq` (its number stays its idempotency key).
    fn write(&mut self, seq: u64, records: &[AuditRecord]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(records).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let path = self.dir.join(format!("{seq:020}.json"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn oldest(&self) -> Option<(u64, PathBuf, Vec<AuditRecord>)> {
        let (seq, path) = Self::files(&self.dir).ok()?.into_iter().next()?;
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(records) => Some((seq, path, records)),
            Err(e) => {
                // Keep the evidence; never delete audit data we cannot read.
                tracing::error!(error = %e, file = %path.display(), "unreadable audit spool file; moving it aside");
                let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                None
            }
        }
    }
}

async fn commit(proposer: &dyn Proposer, node: u64, seq: u64, records: Vec<AuditRecord>) -> Result<(), String> {
    let cmd = hale_store::command::Command {
        references: Default::default(),
        time_ms: crate::now_ms(),
        actor: hale_store::Actor::system(),
        kind: CommandKind::AuditOnce { node, seq, records },
    };
    match proposer.propose(cmd).await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl AuditSink {
    /// Start the flusher task. It exits when every sender is dropped and the queue is drained.
    pub fn start(
        proposer: Arc<dyn Proposer>,
        node: u64,
        queue_max: usize,
        data: &Path,
    ) -> std::io::Result<(AuditSink, tokio::task::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(queue_max.max(1));
        let mut spool = Spool::open(data)?;
        let spooled = Arc::new(AtomicU64::new(Spool::files(&spool.dir)?.len() as u64));
        let spooled2 = spooled.clone();
        let handle = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(FLUSH_RECORDS_MAX);
            loop {
                let pending_spool = spooled2.load(Ordering::Acquire) > 0;
                let got = if pending_spool {
                    match tokio::time::timeout(
                        std::time::Duration::from_millis(RETRY_DELAY_MS),
                        rx.recv_many(&mut buf, FLUSH_RECORDS_MAX),
                    )
                    .await
                    {
                        Ok(n) => n,
                        Err(_) => usize::MAX, // timed out: retry the spool
                    }
                } else {
                    rx.recv_many(&mut buf, FLUSH_RECORDS_MAX).await
                };
                if got == 0 {
                    break; // every sender dropped and the queue is empty
                }
                if got != usize::MAX && buf.len() < FLUSH_RECORDS_MAX {
                    // Gather for a moment so that a busy node commits audit records in a
                    // few large groups rather than one small group per read.
                    tokio::time::sleep(std::time::Duration::from_millis(FLUSH_GATHER_MS)).await;
                    while buf.len() < FLUSH_RECORDS_MAX {
                        match rx.try_recv() {
                            Ok(r) => buf.push(r),
                            Err(_) => break,
                        }
                    }
                }
                // Spooled batches first, oldest first, while the cluster takes them.
                while spooled2.load(Ordering::Acquire) > 0 {
                    let Some((seq, path, records)) = spool.oldest() else {
                        spooled2.store(
                            Spool::files(&spool.dir).map(|f| f.len() as u64).unwrap_or(0),
                            Ordering::Release,
                        );
                        break;
                    };
                    let n = records.len();
                    match commit(proposer.as_ref(), node, seq, records).await {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&path);
                            spooled2.fetch_sub(1, Ordering::AcqRel);
                            tracing::info!(records = n, "committed spooled read-audit records");
                        }
                        Err(_) => break,
                    }
                }
                for records in batches(std::mem::take(&mut buf)) {
                    let seq = loop {
                        match spool.next_seq() {
                            Ok(s) => break s,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot reserve audit batch numbers on disk; retrying");
                                tokio::time::sleep(std::time::Duration::from_millis(RETRY_DELAY_MS)).await;
                            }
                        }
                    };
                    if spooled2.load(Ordering::Acquire) == 0 {
                        match commit(proposer.as_ref(), node, seq, records.clone()).await {
                            Ok(()) => continue,
                            Err(why) => {
                                tracing::warn!(records = records.len(), reason = %why, "cannot commit read audit records now; spooling them to disk");
                            }
                        }
                    }
                    // Keep order: once anything is spooled, new batches queue behind it.
                    loop {
                        if spool.bytes() < SPOOL_BYTES_MAX {
                            match spool.write(seq, &records) {
                                Ok(()) => {
                                    spooled2.fetch_add(1, Ordering::AcqRel);
                                    break;
                                }
                                Err(e) => tracing::error!(error = %e, "cannot write the audit spool; retrying"),
                            }
                        } else {
                            // Full: the spooled batches go first (a newer number
                            // committed before them would make apply skip them).
                            while let Some((old_seq, path, old)) = spool.oldest() {
                                if commit(proposer.as_ref(), node, old_seq, old).await.is_err() {
                                    break;
                                }
                                let _ = std::fs::remove_file(&path);
                                spooled2.fetch_sub(1, Ordering::AcqRel);
                            }
                            if spool.oldest().is_none()
                                && commit(proposer.as_ref(), node, seq, records.clone()).await.is_ok()
                            {
                                break;
                            }
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(RETRY_DELAY_MS)).await;
                    }
                }
            }
        });
        Ok((AuditSink { tx, spooled }, handle))
    }

    pub async fn record(&self, r: AuditRecord) {
        if self.tx.send(r).await.is_err() {
            tracing::error!("audit sink closed; a read went unaudited during shutdown");
        }
    }

    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Batches waiting on disk for the cluster to take them.
    pub fn spooled_batches(&self) -> u64 {
        self.spooled.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use hale_store::{Actor, AuditAction};

    fn rec(detail_bytes: usize) -> AuditRecord {
        AuditRecord {
            time_ms: 1,
            actor: Actor::system(),
            action: AuditAction::Read,
            rtype: "Patient".into(),
            id: Some("p".into()),
            patient: Some("p".into()),
            outcome: 0,
            detail: "x".repeat(detail_bytes),
            purpose: None,
        }
    }

    #[test]
    fn batches_keep_order_and_fit_one_log_entry_unsplit() {
        let records: Vec<AuditRecord> = (0..FLUSH_RECORDS_MAX).map(|i| rec(i % 300)).collect();
        let out = batches(records.clone());
        assert!(out.len() > 1, "4,096 records of up to 300 bytes need several batches");
        assert_eq!(out.concat(), records, "every record, in order, once");
        for b in &out {
            let cmd = hale_store::command::Command {
                references: Default::default(),
                time_ms: 1,
                actor: Actor::system(),
                kind: hale_store::CommandKind::AuditOnce {
                    node: 1,
                    seq: u64::MAX,
                    records: b.clone(),
                },
            };
            let n = hale_store::codec::encode(&cmd).len();
            assert!(n <= hale_store::COMMAND_BYTES_MAX, "a batch encodes to {n} bytes");
            assert!(serde_json::to_vec(&cmd).unwrap().len() <= hale_store::COMMAND_BYTES_MAX);
        }
        // One record too large for a batch goes alone, never dropped.
        let big = batches(vec![rec(10), rec(FLUSH_BYTES_MAX), rec(10)]);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert!(batches(Vec::new()).is_empty());
    }
}
