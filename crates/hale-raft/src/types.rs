//! The openraft type configuration: what travels in the log and who the nodes are.

use hale_store::apply::Applied;
use hale_store::command::Command;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a node lives and how to reach it. Stored in the membership, so every
/// node knows every other node's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaleNode {
    /// `host:port` of the raft RPC listener.
    pub raft_addr: String,
    /// Base URL of the FHIR API, e.g. `http://10.0.0.5:8080`.
    pub api_url: String,
    /// Data-centre name for a voter, hospital-site name for a learner.
    pub site: String,
}

impl fmt::Display for HaleNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (raft {}, api {})", self.site, self.raft_addr, self.api_url)
    }
}

/// What applying one log entry produced: the command's outcome, or nothing
/// for a leader's blank entry and a membership change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response(pub Option<Applied>);

openraft::declare_raft_types!(
    /// Hale's raft types: commands in, apply outcomes out, SQLite files as snapshots.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = HaleNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, HaleNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, HaleNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, HaleNode>;
