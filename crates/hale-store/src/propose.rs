//! The seam between the server and the log: [`Proposer`].
//!
//! Every node runs the raft log (`hale-raft`; a single node is a cluster of
//! one), which implements this trait. The server hands it commands and gets
//! back the log index and the apply outcome once the command is committed on
//! a quorum and applied. Keeping the trait here means the server depends on
//! "something that commits commands", not on raft.

use crate::apply::Applied;
use crate::command::Command;
use crate::{StateMachine, StoreError};
use std::path::Path;
use std::sync::Arc;

/// Commands applied per SQLite transaction when replaying a log.
pub const REPLAY_BATCH_COMMANDS_MAX: usize = 512;

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

/// A proposal in flight.
pub type ProposeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, Applied), ProposeError>> + Send + 'a>>;

pub trait Proposer: Send + Sync + 'static {
    /// Commit `cmd` and return its log index and outcome.
    fn propose(&self, cmd: Command) -> ProposeFuture<'_>;
    /// The last log index applied to this node's store.
    fn last_applied(&self) -> u64;
}

/// Replay `log` (consecutive indexes) into a fresh state machine in `dir`:
/// the determinism check used by tests and by operators comparing replicas.
pub fn replay(dir: &Path, log: &[(u64, Command)]) -> Result<StateMachine, StoreError> {
    let mut sm = StateMachine::open(dir)?;
    for chunk in log.chunks(REPLAY_BATCH_COMMANDS_MAX) {
        let entries: Vec<(u64, &Command)> = chunk.iter().map(|(i, c)| (*i, c)).collect();
        sm.apply(&entries)?;
    }
    Ok(sm)
}
