//! The single-node log: group commit.
//!
//! Requests queue on a bounded channel. One thread takes up to
//! [`BATCH_COMMANDS_MAX`] of them, appends them to `command_log` and applies
//! them in the same SQLite transaction, commits (one fsync for the whole
//! group), then answers every waiter. Under load this turns N fsyncs into one,
//! which is what makes durable writes fast; an idle node commits each request
//! on its own with no added delay.

use crate::apply::Applied;
use crate::command::{self, Command};
use crate::{StateMachine, StoreError};
use rusqlite::params;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Commands queued but not yet committed; a full queue pushes back on callers.
pub const QUEUE_COMMANDS_MAX: usize = 4_096;
/// Commands per group commit.
pub const BATCH_COMMANDS_MAX: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("the write path has stopped (the node is shutting down or its storage failed)")]
    Stopped,
    #[error("storage failure while committing: {0}")]
    Storage(Arc<StoreError>),
    /// The cluster cannot commit now (no leader, no quorum, leader unreachable).
    /// The text says why and whether the write may still commit.
    #[error("{0}")]
    Unavailable(String),
}

struct Request {
    cmd: Command,
    reply: oneshot::Sender<Result<(u64, Applied), ProposeError>>,
}

/// Handle to the writer thread. Cloning is cheap.
#[derive(Clone)]
pub struct LocalLog {
    tx: mpsc::SyncSender<Request>,
    applied: Arc<std::sync::atomic::AtomicU64>,
}

impl LocalLog {
    /// Open the state machine in `dir` and start the writer thread.
    pub fn start(dir: &Path) -> Result<LocalLog, StoreError> {
        let mut sm = StateMachine::open(dir)?;
        let log_end: i64 = sm
            .conn()
            .query_row("SELECT COALESCE(MAX(idx), 0) FROM command_log", [], |r| r.get(0))?;
        // The log and the state commit together, so they cannot disagree.
        assert_eq!(
            log_end as u64,
            sm.last_applied(),
            "command log and applied index disagree: the store is corrupt"
        );
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE_COMMANDS_MAX);
        let applied = Arc::new(std::sync::atomic::AtomicU64::new(sm.last_applied()));
        let applied2 = applied.clone();
        std::thread::Builder::new()
            .name("hale-writer".into())
            .spawn(move || {
                // A panic here means an invariant of the store failed. Continuing could
                // acknowledge writes that were never applied, so stop the whole process.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer_loop(&mut sm, rx, &applied2)));
                if outcome.is_err() {
                    tracing::error!("the writer thread panicked; aborting so that a supervisor restarts the node from its durable log");
                    std::process::abort();
                }
            })
            .map_err(StoreError::Io)?;
        Ok(LocalLog { tx, applied })
    }

    /// Commit a command durably and return its log index and outcome.
    pub async fn propose(&self, cmd: Command) -> Result<(u64, Applied), ProposeError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        let req = Request { cmd, reply };
        // try_send first; a full queue falls back to a blocking send off the async threads.
        match tx.try_send(req) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(req)) => {
                tokio::task::spawn_blocking(move || tx.send(req).map_err(|_| ()))
                    .await
                    .map_err(|_| ProposeError::Stopped)?
                    .map_err(|_| ProposeError::Stopped)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(ProposeError::Stopped),
        }
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Blocking variant for CLI tools outside a runtime.
    pub fn propose_blocking(&self, cmd: Command) -> Result<(u64, Applied), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { cmd, reply })
            .map_err(|_| ProposeError::Stopped)?;
        rx.blocking_recv().map_err(|_| ProposeError::Stopped)?
    }

    pub fn last_applied(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }
}

fn writer_loop(sm: &mut StateMachine, rx: mpsc::Receiver<Request>, applied: &std::sync::atomic::AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let start = sm.last_applied() + 1;
        let entries: Vec<(u64, &Command)> = batch
            .iter()
            .enumerate()
            .map(|(i, r)| (start + i as u64, &r.cmd))
            .collect();
        let result = sm.apply_with(&entries, |conn| {
            let mut stmt = conn.prepare_cached("INSERT INTO command_log(idx, bytes) VALUES (?1, ?2)")?;
            for (index, cmd) in &entries {
                stmt.execute(params![*index as i64, command::encode(cmd)])?;
            }
            Ok(())
        });
        match result {
            Ok(outcomes) => {
                applied.store(sm.last_applied(), std::sync::atomic::Ordering::Release);
                for ((i, req), out) in batch.into_iter().enumerate().zip(outcomes) {
                    let _ = req.reply.send(Ok((start + i as u64, out)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = batch.len(), "group commit failed; the commands were not applied");
                let e = Arc::new(e);
                for req in batch {
                    let _ = req.reply.send(Err(ProposeError::Storage(e.clone())));
                }
            }
        }
    }
}

/// Read the single-node command log of the store in `dir`, in order.
pub fn read_log(dir: &Path) -> Result<Vec<(u64, Command)>, StoreError> {
    let conn =
        rusqlite::Connection::open_with_flags(dir.join(crate::DB_FILE), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT idx, bytes FROM command_log ORDER BY idx")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (index, bytes) = row?;
        let cmd = command::decode(&bytes).map_err(|e| StoreError::CorruptLog {
            index,
            reason: e.to_string(),
        })?;
        out.push((index, cmd));
    }
    Ok(out)
}

/// Replay `log` into a fresh state machine in `dir` (which must be empty).
pub fn replay(dir: &Path, log: &[(u64, Command)]) -> Result<StateMachine, StoreError> {
    let mut sm = StateMachine::open(dir)?;
    for chunk in log.chunks(BATCH_COMMANDS_MAX) {
        let entries: Vec<(u64, &Command)> = chunk.iter().map(|(i, c)| (*i, c)).collect();
        sm.apply(&entries)?;
    }
    Ok(sm)
}

/// How the server hands a command to the log: a single node's [`LocalLog`]
/// today, the raft client in a cluster. Returns the log index and outcome once
/// the command is durable (and, in a cluster, committed on a quorum).
pub type ProposeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, Applied), ProposeError>> + Send + 'a>>;

pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, cmd: Command) -> ProposeFuture<'_>;
    fn last_applied(&self) -> u64;
}

impl Proposer for LocalLog {
    fn propose(&self, cmd: Command) -> ProposeFuture<'_> {
        Box::pin(LocalLog::propose(self, cmd))
    }

    fn last_applied(&self) -> u64 {
        LocalLog::last_applied(self)
    }
}
