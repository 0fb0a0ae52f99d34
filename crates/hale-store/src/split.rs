//! Splitting one large command into log entries of bounded size.
//!
//! Why: one [`Command`] is one raft log entry. Demo batches, imports and
//! `$postpone` / `$rebook` commits encode to hundreds of kilobytes, and one
//! such entry stalls replication: an AppendEntries carrying it holds up every
//! entry behind it, and on a slow link to a site replica it may not arrive
//! within a heartbeat. So the proposer cuts the serde_json encoding of a large
//! command into [`CommandKind::Part`]s of at most `bytes_max` encoded bytes
//! each, and proposes them in order.
//!
//! The command stays atomic: apply only stages parts (table `command_parts`)
//! until the last one arrives, then reassembles, decodes and applies the whole
//! command at the last part's log index, in one SQLite transaction. Missing,
//! duplicated or undecodable parts are refused deterministically and nothing
//! takes effect. Parts a dead proposer left behind are purged by later parts,
//! [`STAGED_PART_TTL_MS`] of command time after they were staged.

use crate::command::{Command, CommandKind, CommandPart};
use std::sync::OnceLock;

/// Parts one command may be split into.
pub const PARTS_PER_COMMAND_MAX: u32 = 1024;
/// Encoded bytes of a command that is split; the same bound as the raft RPC body.
pub const SPLIT_COMMAND_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The smallest `bytes_max` [`split_command`] accepts.
pub const PART_BYTES_MIN: usize = 1024;
/// Staged parts whose command time is older than this, measured against the
/// command time of a part being applied, are purged (their proposer is gone).
pub const STAGED_PART_TTL_MS: i64 = 60 * 60 * 1000;

/// Encoded bytes that a part must leave for its chunk once the envelope
/// (time, actor, group, seq, count) is counted.
const CHUNK_BYTES_MIN: usize = 64;

/// Why a command cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("a log entry bound of {bytes_max} bytes is too small: parts need at least {PART_BYTES_MIN} bytes")]
    BytesMaxTooSmall { bytes_max: usize },
    #[error("the part group id is empty: a split command needs a unique group id (a UUID)")]
    EmptyGroup,
    #[error("a part's envelope (time, actor, group id) takes {envelope_bytes} of the {bytes_max} bytes allowed, leaving no room for a chunk")]
    EnvelopeTooLarge { envelope_bytes: usize, bytes_max: usize },
    #[error("the command encodes to {bytes} bytes; a command may have at most {SPLIT_COMMAND_BYTES_MAX} bytes even when split")]
    TooLarge { bytes: usize },
    #[error("the command needs more than {PARTS_PER_COMMAND_MAX} parts of at most {bytes_max} bytes")]
    TooManyParts { bytes_max: usize },
    #[error("a command part of {bytes} bytes exceeds the bound of {bytes_max} bytes, and parts are never split again")]
    NestedPart { bytes: usize, bytes_max: usize },
}

/// Split `cmd` into commands whose serde_json encodings are each at most
/// `bytes_max` bytes.
///
/// A command that already fits is returned unchanged, as the only element
/// (a [`CommandKind::Part`] that fits included). Otherwise the encoding is cut
/// greedily, at UTF-8 char boundaries, into `CommandKind::Part`s with
/// `seq` `0..count`, all carrying `group`, the command's `time_ms` and `actor`.
/// Propose them in order; apply answers `Applied::Staged` for every part but
/// the last, whose answer is the whole command's.
///
/// Refuses a `bytes_max` below [`PART_BYTES_MIN`], an empty `group`, a
/// command over [`SPLIT_COMMAND_BYTES_MAX`] or needing more than
/// [`PARTS_PER_COMMAND_MAX`] parts, and a `Part` that does not fit.
pub fn split_command(cmd: &Command, bytes_max: usize, group: &str) -> Result<Vec<Command>, SplitError> {
    if bytes_max < PART_BYTES_MIN {
        return Err(SplitError::BytesMaxTooSmall { bytes_max });
    }
    let encoded = serde_json::to_string(cmd).expect("a command always serialises");
    if encoded.len() <= bytes_max {
        return Ok(vec![cmd.clone()]);
    }
    if matches!(cmd.kind, CommandKind::Part(_)) {
        return Err(SplitError::NestedPart {
            bytes: encoded.len(),
            bytes_max,
        });
    }
    if encoded.len() > SPLIT_COMMAND_BYTES_MAX {
        return Err(SplitError::TooLarge { bytes: encoded.len() });
    }
    if group.is_empty() {
        return Err(SplitError::EmptyGroup);
    }
    let part = |seq: u32, count: u32, chunk: String| Command {
        references: cmd.references,
        time_ms: cmd.time_ms,
        actor: cmd.actor.clone(),
        kind: CommandKind::Part(CommandPart {
            group: group.to_string(),
            seq,
            count,
            chunk,
        }),
    };
    // The envelope measured with the widest seq and count a split can have:
    // an upper bound on every part's encoding without its chunk's characters.
    let envelope_bytes = encoded_len(&part(PARTS_PER_COMMAND_MAX, PARTS_PER_COMMAND_MAX, String::new()));
    let budget = bytes_max.saturating_sub(envelope_bytes);
    if budget < CHUNK_BYTES_MIN {
        return Err(SplitError::EnvelopeTooLarge {
            envelope_bytes,
            bytes_max,
        });
    }

    // Greedy: fill each chunk until its escaped length would exceed the budget.
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    let (mut start, mut used) = (0usize, 0usize);
    for (i, c) in encoded.char_indices() {
        let w = escaped_len(c);
        if used + w > budget {
            bounds.push((start, i));
            if bounds.len() >= PARTS_PER_COMMAND_MAX as usize {
                return Err(SplitError::TooManyParts { bytes_max });
            }
            start = i;
            used = 0;
        }
        used += w;
    }
    bounds.push((start, encoded.len()));

    let count = bounds.len() as u32;
    let parts: Vec<Command> = bounds
        .into_iter()
        .enumerate()
        .map(|(seq, (a, b))| part(seq as u32, count, encoded[a..b].to_string()))
        .collect();
    for p in &parts {
        // The envelope bound plus exact escaped lengths make this hold; measure anyway.
        let n = encoded_len(p);
        assert!(
            n <= bytes_max,
            "bug in split_command: a part of {n} bytes exceeds {bytes_max}"
        );
    }
    Ok(parts)
}

fn encoded_len(cmd: &Command) -> usize {
    serde_json::to_vec(cmd).expect("a command always serialises").len()
}

/// Bytes `c` takes inside a serde_json string. ASCII is measured with
/// serde_json itself (quotes, backslashes and control characters are
/// escaped); serde_json writes every other char as its UTF-8 bytes.
fn escaped_len(c: char) -> usize {
    static ASCII: OnceLock<[u8; 128]> = OnceLock::new();
    if !c.is_ascii() {
        return c.len_utf8();
    }
    let table = ASCII.get_or_init(|| {
        let mut t = [0u8; 128];
        for (b, slot) in t.iter_mut().enumerate() {
            let quoted = serde_json::to_string(&char::from(b as u8).to_string()).expect("a string serialises");
            *slot = (quoted.len() - 2) as u8;
        }
        t
    });
    table[c as usize] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_len_matches_serde_json() {
        for c in [
            'a', '"', '\\', '\n', '\u{1}', '\u{7f}', 'ë', '\u{a0}', '€', '😀', '\u{2028}',
        ] {
            let quoted = serde_json::to_string(&c.to_string()).unwrap();
            assert_eq!(escaped_len(c), quoted.len() - 2, "{c:?}");
        }
    }
}
