//! The SQLite schema. One database file per node holds the state machine
//! (resources, history, search index, references, audit) and node-local
//! metadata (`meta`: schema version, applied index, raft applied log id and
//! membership). The raft log lives in its own file (`hale-raft`).

/// Bumped when the schema changes incompatibly; checked on open.
/// 2: a history row's JSON is NULL for the version whose JSON is in
/// `resources` (see `history` below); a version-1 store is migrated on open.
/// 3: audit rows carry `purpose`, `prev_hash` and `hash` (the hash chain,
/// [`crate::audit::chain_hash`]) and `audit_chain` holds its head; a version-2
/// store is migrated on open ([`MIGRATE_2_TO_3`], then the chain is computed
/// over its rows in `seq` order). The version is bumped, rather than columns
/// added quietly, so that an older build refuses a version-3 store instead of
/// appending rows without hashes, which would break the chain.
pub const SCHEMA_VERSION: i64 = 3;

/// Turns a version-1 store into a version-2 one: the copies history held of
/// the JSON in `resources` are dropped. For a deleted resource that is its
/// last live version (a delete is one version after it, and leaves
/// `resources.json` as it was).
pub const MIGRATE_1_TO_2: &str = r#"
UPDATE history SET json = NULL
WHERE hid IN (
    SELECT h.hid FROM resources r JOIN history h ON h.rid = r.rid
    WHERE h.version = CASE WHEN r.deleted = 0 THEN r.version ELSE r.version - 1 END
      AND h.method != 'DELETE'
);
"#;

/// The columns schema version 3 adds to `audit` (at the end, as in [`DDL`], so
/// a migrated store hashes like a new one). The chain is filled in afterwards.
pub const MIGRATE_2_TO_3: &str = r#"
ALTER TABLE audit ADD COLUMN purpose TEXT;
ALTER TABLE audit ADD COLUMN prev_hash BLOB;
ALTER TABLE audit ADD COLUMN hash BLOB;
"#;

/// Indexes over columns a migration may add, so created after it (on every
/// open; idempotent). Not state: the content hash covers tables, not indexes.
/// The break-glass review (`audit::break_glass_list`) finds start rows and
/// the rows closing them through these rather than scanning the trail.
pub const INDEXES_AFTER_MIGRATION: &str = r#"
CREATE INDEX IF NOT EXISTS audit_btg_start ON audit(seq)
    WHERE action = 'E' AND rtype = 'Patient' AND purpose = 'BTG';
CREATE INDEX IF NOT EXISTS audit_btg_close ON audit(res_id)
    WHERE action = 'E' AND rtype = 'AuditEvent';
"#;

pub const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS meta(
    key   TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;

-- The current version of every resource ever written (deleted ones flagged).
CREATE TABLE IF NOT EXISTS resources(
    rid        INTEGER PRIMARY KEY,
    rtype      TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    json       TEXT    NOT NULL,
    UNIQUE(rtype, id)
);

-- Every version, including the current one. json is NULL for a delete, and
-- for the one version whose JSON is in `resources` (the live version, or the
-- last live version of a deleted resource): a board loaded once would
-- otherwise hold every resource twice. Apply copies it here when
-- `resources` moves on to a newer version.
CREATE TABLE IF NOT EXISTS history(
    hid        INTEGER PRIMARY KEY,
    rid        INTEGER NOT NULL,
    rtype      TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    method     TEXT    NOT NULL,
    json       TEXT,
    UNIQUE(rid, version)
);
CREATE INDEX IF NOT EXISTS history_type ON history(rtype, hid);

-- Search index: one row per extracted value of a live resource.
-- token: s = system, v = code; string: v = normalised text;
-- reference: s = target type, v = target id; date: lo..hi inclusive ms.
CREATE TABLE IF NOT EXISTS idx(
    rid   INTEGER NOT NULL,
    rtype TEXT    NOT NULL,
    param TEXT    NOT NULL,
    s     TEXT,
    v     TEXT,
    lo    INTEGER,
    hi    INTEGER
);
CREATE INDEX IF NOT EXISTS idx_v   ON idx(rtype, param, v, s, rid) WHERE v IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_d   ON idx(rtype, param, lo, hi, rid) WHERE lo IS NOT NULL;
DROP INDEX IF EXISTS idx_rid;
CREATE INDEX IF NOT EXISTS idx_rp  ON idx(rid, param);

-- Every local reference held by a live resource: referential integrity and $everything.
CREATE TABLE IF NOT EXISTS refs(
    rid      INTEGER NOT NULL,
    dst_type TEXT    NOT NULL,
    dst_id   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS refs_dst ON refs(dst_type, dst_id, rid);
CREATE INDEX IF NOT EXISTS refs_rid ON refs(rid, dst_type, dst_id);

-- Audit trail, rendered as FHIR AuditEvent on read. seq = (log index << 20) | position.
-- purpose: the purpose of use the request stated (a v3 PurposeOfUse code).
-- prev_hash, hash: the hash chain (32 bytes each, hale_store::audit::chain_hash):
-- hash = SHA-256(prev_hash || the row's other fields), prev_hash = the hash of
-- the row before in seq order (zeros for the first). Computed in apply.
CREATE TABLE IF NOT EXISTS audit(
    seq     INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    user    TEXT    NOT NULL,
    role    TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    rtype   TEXT    NOT NULL,
    res_id  TEXT,
    patient TEXT,
    outcome INTEGER NOT NULL,
    detail  TEXT    NOT NULL,
    purpose TEXT,
    prev_hash BLOB,
    hash    BLOB
);
CREATE INDEX IF NOT EXISTS audit_patient ON audit(patient, time_ms) WHERE patient IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_user    ON audit(user, time_ms);
CREATE INDEX IF NOT EXISTS audit_time    ON audit(time_ms);

-- Parts of a split command (hale_store::split) waiting for their last part.
-- "group" is quoted: GROUP is an SQL keyword. time_ms is the command time,
-- for purging parts whose proposer died.
CREATE TABLE IF NOT EXISTS command_parts(
    "group" TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    chunk   TEXT    NOT NULL,
    PRIMARY KEY("group", seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS command_parts_time ON command_parts(time_ms);

-- Site journals replayed (hale_store::sync): each node's chain head, and a
-- receipt per entry saying how it ended (outcome is the JSON of sync::Outcome).
CREATE TABLE IF NOT EXISTS sync_heads(
    node INTEGER PRIMARY KEY,
    site TEXT    NOT NULL,
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_receipts(
    node      INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    outcome   TEXT    NOT NULL,
    PRIMARY KEY(node, seq)
) WITHOUT ROWID;

-- The last read-audit batch applied per node (CommandKind::AuditOnce).
CREATE TABLE IF NOT EXISTS audit_heads(
    node INTEGER PRIMARY KEY,
    seq  INTEGER NOT NULL
);

-- The head of the audit hash chain: the last row's seq and hash (hex); one row,
-- none while the audit table is empty. Replicated state, so every replica that
-- applied the same entries holds the same head.
CREATE TABLE IF NOT EXISTS audit_chain(
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);

-- Local staff accounts for sign-in (hale_store::accounts). password_hash is an
-- Argon2id PHC string computed before the command was proposed.
CREATE TABLE IF NOT EXISTS accounts(
    user          TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    updated_by    TEXT    NOT NULL
) WITHOUT ROWID;

"#;

/// Tables that make up the replicated state, in content-hash order.
/// Node-local metadata is not state.
///
/// `command_parts` is included: its rows are written by apply from the log
/// alone, and they decide what a later final part applies, so two replicas
/// that differ there will diverge in `resources` once that part arrives. The
/// hash should show that before it happens. It is empty whenever no split
/// command is in flight.
pub const STATE_TABLES: &[(&str, &str)] = &[
    ("resources", "rid"),
    ("history", "hid"),
    ("idx", "rid, rtype, param, s, v, lo, hi"),
    ("refs", "rid, dst_type, dst_id"),
    ("audit", "seq"),
    ("audit_chain", "id"),
    ("command_parts", "\"group\", seq"),
    ("sync_heads", "node"),
    ("sync_receipts", "node, seq"),
    ("audit_heads", "node"),
    ("accounts", "user"),
];
