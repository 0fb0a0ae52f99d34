//! Read audit: records queue here and are committed in batches as one
//! `Audit` command, so auditing every read costs a queue push per request.
//! A full queue makes readers wait: reads are never served unaudited.

use hale_store::propose::Proposer;
use hale_store::{AuditRecord, CommandKind};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Audit records per command.
pub const FLUSH_RECORDS_MAX: usize = 4_096;
/// How long the flusher gathers records before committing them.
pub const FLUSH_GATHER_MS: u64 = 10;
/// Retry delay after a failed flush.
pub const RETRY_DELAY_MS: u64 = 200;

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
}

impl AuditSink {
    /// Start the flusher task. It exits when every sender is dropped and the queue is drained.
    pub fn start(proposer: Arc<dyn Proposer>, queue_max: usize) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(queue_max.max(1));
        let handle = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(FLUSH_RECORDS_MAX);
            while rx.recv_many(&mut buf, FLUSH_RECORDS_MAX).await > 0 {
                // Gather for a moment so that a busy node commits audit records in a
                // few large groups (one fsync each) rather than one small group per read.
                if buf.len() < FLUSH_RECORDS_MAX {
                    tokio::time::sleep(std::time::Duration::from_millis(FLUSH_GATHER_MS)).await;
                    while buf.len() < FLUSH_RECORDS_MAX {
                        match rx.try_recv() {
                            Ok(r) => buf.push(r),
                            Err(_) => break,
                        }
                    }
                }
                let records = std::mem::take(&mut buf);
                loop {
                    let cmd = hale_store::command::Command {
                        time_ms: crate::now_ms(),
                        actor: hale_store::Actor::system(),
                        kind: CommandKind::Audit(records.clone()),
                    };
                    match proposer.propose(cmd).await {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::error!(error = %e, records = records.len(), "could not commit read audit records; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(RETRY_DELAY_MS)).await;
                        }
                    }
                }
            }
        });
        (AuditSink { tx }, handle)
    }

    pub async fn record(&self, r: AuditRecord) {
        if self.tx.send(r).await.is_err() {
            tracing::error!("audit sink closed; a read went unaudited during shutdown");
        }
    }

    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}
