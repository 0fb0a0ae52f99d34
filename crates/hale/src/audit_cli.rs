//! `hale audit verify`: recompute a store's audit hash chain and report the
//! first row that does not match (`hale_store::audit::verify`).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hale_store::rusqlite::{OpenFlags, OptionalExtension};
use std::path::PathBuf;

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the audit hash chain of a data directory from its first row;
    /// print the row count and head, or the first row that was changed, and fail.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// Data directory of the node (opened read-only; safe while it runs).
    #[arg(long, default_value = "./hale-data", env = "HALE_DATA")]
    data: PathBuf,
}

pub fn run(a: AuditArgs) -> Result<()> {
    match a.cmd {
        AuditCmd::Verify(v) => verify(&v),
    }
}

fn verify(a: &VerifyArgs) -> Result<()> {
    let path = a.data.join(hale_store::DB_FILE);
    if !path.exists() {
        bail!(
            "no Hale store in {}; point --data at a node's data directory",
            a.data.display()
        );
    }
    let conn = hale_store::db::open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the store in {}", a.data.display()))?;
    let version: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .optional()
        .with_context(|| format!("cannot read the store in {}", a.data.display()))?;
    if version != Some(hale_store::schema::SCHEMA_VERSION) {
        bail!(
            "the store in {} is schema version {}, this build checks version {}: start the node once with this build (it migrates the store and computes the chain), then verify",
            a.data.display(),
            version.unwrap_or(0),
            hale_store::schema::SCHEMA_VERSION
        );
    }
    // One read transaction: a running node may append meanwhile.
    conn.execute_batch("BEGIN")?;
    let report = hale_store::audit::verify(&conn)
        .with_context(|| format!("cannot read the audit rows in {}", a.data.display()))?;
    conn.execute_batch("COMMIT")?;
    if let Some(f) = &report.fault {
        bail!(
            "the audit chain in {} is broken: {f}. {} rows before it check out",
            a.data.display(),
            report.rows
        );
    }
    match &report.head {
        Some(h) => println!(
            "audit chain OK: {} rows, head row {} hash {}",
            report.rows, h.seq, h.hash
        ),
        None => println!("audit chain OK: no audit rows yet"),
    }
    Ok(())
}
