//! The openraft type configuration: what travels in the log and who the nodes are.

use bytes::Bytes;
use hale_store::apply::Applied;
use hale_store::codec::{self, CodecError};
use hale_store::command::Command;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

/// A command as the log holds it: its binary encoding ([`hale_store::codec`]),
/// made once by the proposing node. The same bytes are written to the log,
/// sent to every follower and decoded by apply; cloning shares them.
///
/// In a human-readable serde format (JSON) it reads and writes the command
/// itself, so a log entry written as JSON before the binary encoding existed
/// still decodes ([`crate::log_store::decode_entry`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

impl Payload {
    pub fn encode(cmd: &Command) -> Payload {
        Payload(Bytes::from(codec::encode(cmd)))
    }

    /// Bytes already in a known encoding (checked when decoded).
    pub fn from_encoded(bytes: Bytes) -> Payload {
        Payload(bytes)
    }

    pub fn decode(&self) -> Result<Command, CodecError> {
        codec::decode(&self.0)
    }

    /// The command's `time_ms` (backups index their segments by it).
    pub fn time_ms(&self) -> Result<i64, CodecError> {
        Ok(self.decode()?.time_ms)
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.decode().map_err(serde::ser::Error::custom)?.serialize(s)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        if d.is_human_readable() {
            Command::deserialize(d).map(|c| Payload::encode(&c))
        } else {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Payload;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an encoded command")
                }
                fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Payload, E> {
                    Ok(Payload(Bytes::copy_from_slice(b)))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

openraft::declare_raft_types!(
    /// Hale's raft types: encoded commands in, apply outcomes out, SQLite files as snapshots.
    pub TypeConfig:
        D = Payload,
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
