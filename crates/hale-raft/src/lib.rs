//! Hale's replication: openraft over the node's SQLite store.
//!
//! - [`log_store`]: the raft log in its own SQLite file, fsynced per batch.
//! - [`state_machine`]: committed entries applied to `hale_store`; snapshots
//!   are SQLite files.
//! - [`network`]: raft RPC over HTTP with JSON bodies, fault injection.
//! - [`peer_tls`]: mutual TLS between nodes, identities from certificates.
//! - [`forward`]: the origin of a forwarded write and the leader's check of it.
//! - [`node`]: a running node: write forwarding, read consistency, membership.
//!
//! This crate knows raft and the store's `Command`, not FHIR or HTTP routes
//! other than its own RPC.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes);
// boxing it locally would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod election;
pub mod forward;
pub mod frame;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer_tls;
pub mod state_machine;
pub mod types;

pub use node::{ClusterStatus, MemberStatus, NodeStatus, RaftNode, RaftProposer, RaftSettings, ReadInfo, ReadLevel};
pub use types::{HaleNode, NodeId, TypeConfig};
