//! Binary frames for a log entry (as `raft.db` stores it) and for an
//! AppendEntries request (as `/raft/append` carries it).
//!
//! DESIGN. A command is encoded once, by the proposer ([`Payload`]). An entry
//! frame is a fixed header (log id and payload kind) followed by those bytes
//! unchanged, and an AppendEntries body is a small JSON header (vote, previous
//! log id, commit index) followed by length-prefixed entry frames. So the
//! leader writes the same bytes to its log and to every follower, a follower
//! writes what it received, and nobody re-encodes a FHIR resource.
//!
//! Both frames start with a magic byte and a version. Anything that starts
//! with `{` is the serde_json form that Hale used before, and still decodes:
//! logs written by an older release, and requests from tools and tests that
//! post JSON.
//!
//! Architecture Invariant: frames carry commands as opaque bytes; this module
//! never decodes a command (apply does, in [`crate::state_machine`]).

use crate::types::{Entry, LogId, NodeId, Payload, TypeConfig};
use bytes::Bytes;
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, EntryPayload, Membership};

/// First byte of an entry frame.
pub const ENTRY_MAGIC: u8 = 0xE7;
/// First byte of an AppendEntries frame.
pub const APPEND_MAGIC: u8 = 0xA7;
/// The frame version written.
pub const FRAME_VERSION: u8 = 1;

const TAG_BLANK: u8 = 0;
const TAG_NORMAL: u8 = 1;
const TAG_MEMBERSHIP: u8 = 2;
/// magic, version, term, leader node, index, tag.
pub const ENTRY_HEADER_BYTES: usize = 2 + 8 + 8 + 8 + 1;

/// Largest JSON header an AppendEntries frame may declare.
pub const APPEND_HEADER_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is empty")]
    Empty,
    #[error("frame version {0} is newer than this release reads; upgrade this node to the cluster's release")]
    UnknownVersion(u8),
    #[error("the frame's first byte {0:#04x} starts no known frame")]
    UnknownFormat(u8),
    #[error("the frame is malformed: {0}")]
    Malformed(String),
    #[error("the JSON form does not decode: {0}")]
    Json(#[from] serde_json::Error),
}

/// Append `e`'s entry frame to `out`.
pub fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    out.reserve(ENTRY_HEADER_BYTES + 64);
    out.push(ENTRY_MAGIC);
    out.push(FRAME_VERSION);
    out.extend_from_slice(&e.log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&e.log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&e.log_id.index.to_le_bytes());
    match &e.payload {
        EntryPayload::Blank => out.push(TAG_BLANK),
        EntryPayload::Normal(p) => {
            out.push(TAG_NORMAL);
            out.extend_from_slice(p.bytes());
        }
        EntryPayload::Membership(m) => {
            out.push(TAG_MEMBERSHIP);
            serde_json::to_writer(&mut *out, m).expect("a membership always serialises");
        }
    }
}

/// `e`'s entry frame.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    write_entry(&mut out, e);
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decode an entry frame, or an entry in the JSON form older releases wrote.
/// The command bytes are shared with `bytes`, not copied.
pub fn decode_entry(bytes: Bytes) -> Result<Entry, FrameError> {
    match bytes.first() {
        None => return Err(FrameError::Empty),
        Some(b'{') => return Ok(serde_json::from_slice(&bytes)?),
        Some(&ENTRY_MAGIC) => {}
        Some(&b) => return Err(FrameError::UnknownFormat(b)),
    }
    if bytes.len() < ENTRY_HEADER_BYTES {
        return Err(FrameError::Malformed(format!(
            "an entry frame of {} bytes is shorter than its {ENTRY_HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    if bytes[1] != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(bytes[1]));
    }
    let log_id = LogId::new(
        CommittedLeaderId::new(u64_at(&bytes, 2), u64_at(&bytes, 10) as NodeId),
        u64_at(&bytes, 18),
    );
    let body = bytes.slice(ENTRY_HEADER_BYTES..);
    let payload = match bytes[ENTRY_HEADER_BYTES - 1] {
        TAG_BLANK if body.is_empty() => EntryPayload::Blank,
        TAG_NORMAL if !body.is_empty() => EntryPayload::Normal(Payload::from_encoded(body)),
        TAG_MEMBERSHIP => EntryPayload::Membership(serde_json::from_slice::<Membership<NodeId, _>>(&body)?),
        t => {
            return Err(FrameError::Malformed(format!(
                "payload tag {t} with {} bytes of payload",
                body.len()
            )))
        }
    };
    Ok(Entry { log_id, payload })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AppendHeader {
    vote: crate::types::Vote,
    prev_log_id: Option<LogId>,
    leader_commit: Option<LogId>,
}

/// An AppendEntries frame carrying the prefix of `rpc.entries` that fits in
/// `budget_bytes` of entry frames (at least one entry). Returns the body and
/// how many entries it carries.
pub fn encode_append(rpc: &AppendEntriesRequest<TypeConfig>, budget_bytes: usize) -> (Vec<u8>, usize) {
    let header = serde_json::to_vec(&AppendHeader {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        leader_commit: rpc.leader_commit,
    })
    .expect("a vote and log ids always serialise");
    let mut body = Vec::with_capacity(6 + header.len() + 256);
    body.push(APPEND_MAGIC);
    body.push(FRAME_VERSION);
    body.extend_from_slice(&(header.len() as u32).to_le_bytes());
    body.extend_from_slice(&header);
    let start = body.len();
    let mut sent = 0;
    for e in &rpc.entries {
        let mark = body.len();
        body.extend_from_slice(&[0; 4]);
        write_entry(&mut body, e);
        let n = body.len() - mark - 4;
        body[mark..mark + 4].copy_from_slice(&(n as u32).to_le_bytes());
        if sent > 0 && body.len() - start > budget_bytes {
            body.truncate(mark);
            break;
        }
        sent += 1;
    }
    (body, sent)
}

/// Decode an AppendEntries frame, or the JSON form.
pub fn decode_append(body: Bytes) -> Result<AppendEntriesRequest<TypeConfig>, FrameError> {
    match body.first() {
        None => return Err(FrameError::Empty),
        Some(b'{') => return Ok(serde_json::from_slice(&body)?),
        Some(&APPEND_MAGIC) => {}
        Some(&b) => return Err(FrameError::UnknownFormat(b)),
    }
    if body.len() < 6 {
        return Err(FrameError::Malformed(
            "the AppendEntries frame ends in its header".into(),
        ));
    }
    if body[1] != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(body[1]));
    }
    let header_len = u32::from_le_bytes(body[2..6].try_into().expect("4 bytes")) as usize;
    if header_len > APPEND_HEADER_BYTES_MAX || 6 + header_len > body.len() {
        return Err(FrameError::Malformed(format!(
            "a header of {header_len} bytes in a frame of {}",
            body.len()
        )));
    }
    let h: AppendHeader = serde_json::from_slice(&body[6..6 + header_len])?;
    let mut entries = Vec::new();
    let mut at = 6 + header_len;
    while at < body.len() {
        if body.len() - at < 4 {
            return Err(FrameError::Malformed(format!(
                "{} stray bytes after entry {}",
                body.len() - at,
                entries.len()
            )));
        }
        let n = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        if n > body.len() - at {
            return Err(FrameError::Malformed(format!(
                "entry {} claims {n} bytes, {} remain",
                entries.len(),
                body.len() - at
            )));
        }
        entries.push(decode_entry(body.slice(at..at + n))?);
        at += n;
    }
    Ok(AppendEntriesRequest {
        vote: h.vote,
        prev_log_id: h.prev_log_id,
        leader_commit: h.leader_commit,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_store::command::{Actor, Command, CommandKind, References, WriteOp};
    use openraft::Vote;
    use std::collections::{BTreeMap, BTreeSet};

    fn cmd(id: &str) -> Command {
        Command {
            time_ms: 1,
            actor: Actor::system(),
            kind: CommandKind::Write(WriteOp::Create {
                rtype: "Patient".into(),
                id: id.into(),
                resource: serde_json::json!({"resourceType": "Patient", "id": id, "x": 1.50}),
                if_none_exist: None,
            }),
            references: References::Enforce,
        }
    }

    fn entries() -> Vec<Entry> {
        let id = |t, n, i| LogId::new(CommittedLeaderId::new(t, n), i);
        let nodes: BTreeMap<NodeId, crate::types::HaleNode> = [(1, Default::default()), (2, Default::default())].into();
        vec![
            Entry {
                log_id: id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: id(1, 1, 2),
                payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], nodes)),
            },
            Entry {
                log_id: id(3, 2, 3),
                payload: EntryPayload::Normal(Payload::encode(&cmd("a"))),
            },
            Entry {
                log_id: id(u64::MAX, u64::MAX, u64::MAX),
                payload: EntryPayload::Normal(Payload::encode(&cmd("b"))),
            },
        ]
    }

    fn same(a: &Entry, b: &Entry) {
        assert_eq!(a.log_id, b.log_id);
        assert_eq!(
            serde_json::to_value(&a.payload).unwrap(),
            serde_json::to_value(&b.payload).unwrap()
        );
    }

    #[test]
    fn entries_round_trip_in_both_forms() {
        for e in entries() {
            let f = encode_entry(&e);
            assert_eq!(&f[..2], &[ENTRY_MAGIC, FRAME_VERSION]);
            same(&decode_entry(Bytes::from(f)).unwrap(), &e);
            // The JSON form older releases wrote.
            let j = serde_json::to_vec(&e).unwrap();
            same(&decode_entry(Bytes::from(j)).unwrap(), &e);
        }
    }

    #[test]
    fn the_command_bytes_are_carried_unchanged() {
        let e = &entries()[2];
        let EntryPayload::Normal(p) = &e.payload else {
            unreachable!()
        };
        let f = encode_entry(e);
        assert_eq!(&f[ENTRY_HEADER_BYTES..], &p.bytes()[..]);
        assert_eq!(p.decode().unwrap(), cmd("a"));
    }

    #[test]
    fn append_frames_round_trip_and_respect_the_budget() {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: None,
            leader_commit: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            entries: entries(),
        };
        let (body, sent) = encode_append(&rpc, usize::MAX);
        assert_eq!(sent, 4);
        let back = decode_append(Bytes::from(body)).unwrap();
        assert_eq!(back.vote, rpc.vote);
        assert_eq!(back.leader_commit, rpc.leader_commit);
        assert_eq!(back.entries.len(), 4);
        for (a, b) in back.entries.iter().zip(&rpc.entries) {
            same(a, b);
        }
        // A budget of zero still carries one entry.
        let (body, sent) = encode_append(&rpc, 0);
        assert_eq!(sent, 1);
        assert_eq!(decode_append(Bytes::from(body)).unwrap().entries.len(), 1);
        // The JSON form is still accepted.
        let j = serde_json::to_vec(&rpc).unwrap();
        assert_eq!(decode_append(Bytes::from(j)).unwrap().entries.len(), 4);
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: None,
            leader_commit: None,
            entries: entries(),
        };
        let (body, _) = encode_append(&rpc, usize::MAX);
        for n in 0..body.len() {
            let _ = decode_append(Bytes::copy_from_slice(&body[..n]));
        }
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 0xa5;
            let _ = decode_append(Bytes::from(b));
        }
        let f = encode_entry(&entries()[3]);
        for n in 0..f.len() {
            let _ = decode_entry(Bytes::copy_from_slice(&f[..n]));
        }
        assert!(matches!(
            decode_entry(Bytes::from_static(&[ENTRY_MAGIC, 9])),
            Err(FrameError::Malformed(_))
        ));
        let mut v2 = encode_entry(&entries()[0]);
        v2[1] = 2;
        assert!(matches!(
            decode_entry(Bytes::from(v2)),
            Err(FrameError::UnknownVersion(2))
        ));
    }
}
