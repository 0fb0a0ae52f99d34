//! Commands: the only way state changes.
//!
//! A command is fully determined before it is applied: resource ids, the
//! command's timestamp and the acting user are filled in by the node that
//! accepts the request. `apply` derives everything else (versions, slot
//! status changes, audit rows) from the command and the current state only.

use hale_fhir::ResourceType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default bound, in bytes, on one raft log entry's encoded command
/// (`serde_json::to_vec(&command).len()`). A command whose encoding is larger is
/// proposed as [`CommandKind::Part`]s made by [`crate::split::split_command`], so
/// one AppendEntries never carries a multi-megabyte entry over a slow link.
pub const COMMAND_BYTES_MAX: usize = 256 * 1024;

/// Who asked for a change (or a read, for audit records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: String,
    pub role: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            user: "hale".into(),
            role: "service".into(),
        }
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Wall-clock time assigned by the accepting node, ms since the Unix epoch.
    /// Becomes `meta.lastUpdated` of everything this command writes.
    pub time_ms: i64,
    pub actor: Actor,
    pub kind: CommandKind,
    /// The referential-integrity policy of the node that accepted the request,
    /// fixed before apply so every replica decides alike. Absent from the
    /// encoding when `Enforce`, so logs written before it existed replay unchanged.
    #[serde(default, skip_serializing_if = "References::is_enforce")]
    pub references: References,
}

/// Whether apply holds local references (`Patient/123`) to resources this
/// store holds. `Enforce` (the default, as HAPI and Blaze do): a write whose
/// reference has no live target is refused, and so is a delete that would leave
/// a live resource pointing at nothing. `Off`: references are stored as sent and
/// deletes are not blocked, for loading data from systems whose references
/// point outside what is being loaded (`hale serve --referential-integrity off`).
/// Booking still needs its Slots: an Appointment cannot hold a Slot that does
/// not exist under either policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum References {
    #[default]
    Enforce,
    Off,
}

impl References {
    pub fn is_enforce(&self) -> bool {
        *self == References::Enforce
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandKind {
    /// One create, update or delete.
    Write(WriteOp),
    /// All or nothing (a FHIR transaction Bundle).
    Transaction(Vec<WriteOp>),
    /// Each op succeeds or fails on its own (a FHIR batch Bundle, bulk import).
    Batch(Vec<WriteOp>),
    /// Audit records for reads and for requests rejected before they became commands.
    Audit(Vec<AuditRecord>),
    /// One slice of a larger command that was split to bound the size of a log
    /// entry ([`crate::split`]). Nothing takes effect until the last part applies.
    Part(CommandPart),
    /// Writes a cut-off node accepted into its site journal, replayed in
    /// journal order once the cluster is reachable ([`crate::sync`]). Each
    /// entry is applied at most once and ends committed or as a Task.
    Replay(Vec<Replay>),
    /// A node's batch of audit records with an idempotency key: `seq` grows per
    /// `node`, and a batch whose `seq` is not above the node's last applied one
    /// is skipped, so a batch re-sent after an ambiguous error lands once.
    AuditOnce {
        node: u64,
        seq: u64,
        records: Vec<AuditRecord>,
    },
    /// A change to the local staff accounts ([`crate::accounts`]). The
    /// password hash is computed before proposing, so apply stays deterministic.
    Account(crate::accounts::AccountOp),
}

/// One site-journal entry as it is replayed ([`crate::sync`]).
///
/// `(node, seq)` is the idempotency key: `seq` is contiguous per node, and
/// `hash` chains each entry to the one before it (`prev_hash`), so apply can
/// refuse a gap or a tampered journal. Everything here was fixed at the site
/// when the write was accepted; apply evaluates `base` against the state it
/// finds and follows `policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// The node whose journal this is (the chain is per node).
    pub node: u64,
    /// The hospital site the node serves, for work lists and tags.
    pub site: String,
    pub seq: u64,
    /// Hex SHA-256 of the previous entry ("" for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this entry ([`Replay::compute_hash`]).
    pub hash: String,
    /// When the site accepted it (site clock; information only, never order).
    pub recorded_ms: i64,
    /// Who wrote it at the site.
    pub actor: Actor,
    pub policy: Policy,
    /// What the user saw when writing: the dependency check.
    pub base: Base,
    pub op: WriteOp,
}

impl Replay {
    /// The entry's hash: SHA-256 over the canonical JSON of every field but
    /// `hash` itself, in declaration order.
    pub fn compute_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let body = serde_json::to_vec(&(
            self.node,
            &self.site,
            self.seq,
            &self.prev_hash,
            self.recorded_ms,
            &self.actor,
            self.policy,
            &self.base,
            &self.op,
        ))
        .expect("an entry always serialises");
        let d = Sha256::digest(&body);
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How a journalled write is decided at replay. Chosen at the site from the
/// request alone (see `hale_store::sync::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// A new clinical fact (note, observation, condition...): commit; a
    /// reference that has gone becomes a Task.
    Append,
    /// Arrival, check-in, fulfilled or no-show of an Appointment, or an
    /// Encounter's status: an observed fact. Commit; if the resource changed
    /// centrally meanwhile, apply the status to the current version and raise
    /// a Task.
    SiteStatus,
    /// A Patient's demographics: three-way merge against the version seen.
    Demographics,
    /// A new Patient: commit; if the NHS number is already registered, commit
    /// with the number marked unverified and raise a possible-duplicate Task.
    NewPatient,
    /// A new Appointment holding slots: book if the slots are still free,
    /// otherwise put it on the waitlist and raise a Task. Never a double booking.
    Booking,
    /// Any other update (cancel or move an appointment, change a clinical
    /// record): commit only if nothing changed centrally, otherwise a Task.
    Amend,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Append => "append",
            Policy::SiteStatus => "site-status",
            Policy::Demographics => "demographics",
            Policy::NewPatient => "new-patient",
            Policy::Booking => "booking",
            Policy::Amend => "amend",
        }
    }
}

/// The dependency check of a journalled write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Base {
    /// The committed version the user's edit was based on (None for a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The earlier journal entry of the same node the edit was based on, when
    /// the user edited a version that was itself still pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_seq: Option<u64>,
    /// The resource as the user saw it (for demographics: the base of the
    /// three-way merge, which may itself be a pending version).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::codec::opt_value")]
    pub seen: Option<Value>,
}

/// One slice of the serde_json encoding of a whole [`Command`].
///
/// Parts of one command share `group` and `count` and carry the whole
/// command's `time_ms` and `actor`. Apply stages parts `0..count-1`; the part
/// with `seq == count - 1` reassembles the chunks in `seq` order, decodes the
/// command and applies it at its own log index. A part is never split again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandPart {
    /// Chosen by the proposer before apply (a UUID), unique per split command.
    pub group: String,
    /// Position of this part, `0..count`.
    pub seq: u32,
    /// How many parts the command was split into.
    pub count: u32,
    /// A slice of the encoding, cut at UTF-8 char boundaries.
    pub chunk: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Create with an id chosen before apply. `if_none_exist` holds the decoded
    /// pairs of a FHIR search (`identifier`, `sys|val`); when it matches exactly one
    /// resource nothing is written, when it matches more the create is refused.
    Create {
        rtype: String,
        id: String,
        #[serde(with = "crate::codec::value")]
        resource: Value,
        if_none_exist: Option<Vec<(String, String)>>,
    },
    /// Update (or create with a client-chosen id). `if_match` is the expected current version.
    Update {
        rtype: String,
        id: String,
        #[serde(with = "crate::codec::value")]
        resource: Value,
        if_match: Option<u64>,
    },
    Delete {
        rtype: String,
        id: String,
    },
}

impl WriteOp {
    pub fn rtype(&self) -> &str {
        match self {
            WriteOp::Create { rtype, .. } | WriteOp::Update { rtype, .. } | WriteOp::Delete { rtype, .. } => rtype,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            WriteOp::Create { id, .. } | WriteOp::Update { id, .. } | WriteOp::Delete { id, .. } => id,
        }
    }

    pub fn resource_type(&self) -> Option<ResourceType> {
        self.rtype().parse().ok()
    }
}

/// What an audited action was (FHIR AuditEvent.action: C R U D E).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    Create,
    Read,
    Update,
    Delete,
    Execute,
}

impl AuditAction {
    pub fn code(self) -> &'static str {
        match self {
            AuditAction::Create => "C",
            AuditAction::Read => "R",
            AuditAction::Update => "U",
            AuditAction::Delete => "D",
            AuditAction::Execute => "E",
        }
    }

    pub fn from_code(c: &str) -> Option<AuditAction> {
        Some(match c {
            "C" => AuditAction::Create,
            "R" => AuditAction::Read,
            "U" => AuditAction::Update,
            "D" => AuditAction::Delete,
            "E" => AuditAction::Execute,
            _ => return None,
        })
    }
}

/// One audit row. `outcome` uses FHIR AuditEvent.outcome codes:
/// 0 success, 4 minor failure (rejected request), 8 serious failure, 12 major failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time_ms: i64,
    pub actor: Actor,
    pub action: AuditAction,
    /// The resource type acted on (or searched).
    pub rtype: String,
    /// The resource id acted on, when there is one.
    pub id: Option<String>,
    /// The patient whose record was touched, when known.
    pub patient: Option<String>,
    pub outcome: u8,
    /// What was asked: method and path, or the search query.
    pub detail: String,
    /// The purpose of use the request stated (a v3 PurposeOfUse code such as
    /// `TREAT` or `ETREAT`), when it stated one. Left out of the encoding when
    /// None, so commands logged before it existed decode and encode alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}
