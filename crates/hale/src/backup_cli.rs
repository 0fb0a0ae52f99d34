//! `hale backup` (take, verify, list, prune) and `hale restore`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hale_backup::restore::Target;
use hale_backup::{Catalog, Recipients};
use hale_server::config::Config;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  hale backup --to /mnt/backups/hale --data /var/lib/hale --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  hale backup --config /etc/hale/hale.toml          # dir, recipients and data from [backup] and data
  hale backup verify --from /mnt/backups/hale --identity /root/hale-backup-key.txt
  hale backup list --from /mnt/backups/hale
  hale backup prune --from /mnt/backups/hale --keep 14"
)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: Option<BackupCmd>,
    /// The backup directory (default: `[backup] dir` of --config).
    #[arg(long)]
    to: Option<PathBuf>,
    /// The node's data directory; the node may be running (default: `data` of --config).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The node's TOML config: `data`, `[backup]` and `[store] key_file` are read from it.
    #[arg(long, env = "HALE_CONFIG")]
    config: Option<PathBuf>,
    /// An age recipient (public key, age1...) to encrypt to; repeat for more
    /// (default: `[backup] recipients` of --config).
    #[arg(long = "recipient")]
    recipients: Vec<String>,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Restore the newest base into scratch, compare its content hash with its
    /// manifest, decode every archive segment after it, and replay an older
    /// base through the archive to the newest; record the outcome in the directory.
    #[command(after_help = "Example:
  hale backup verify --from /mnt/backups/hale --identity /root/hale-backup-key.txt")]
    Verify {
        #[arg(long)]
        from: PathBuf,
        /// age identity file (AGE-SECRET-KEY-1... lines) of one of the recipients.
        #[arg(long)]
        identity: PathBuf,
        /// Where the scratch restore goes (default: the system's temporary directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Make an age key pair for backups: the secret key file (mode 0600; keep
    /// it off the node, e.g. in the trust's key safe) and, printed, the public
    /// key to put in `[backup] recipients`. Same format as `age-keygen`.
    #[command(after_help = "Example:
  hale backup keygen --out /root/hale-backup-key.txt")]
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// The base backups, the archive's reach and the restorable span.
    #[command(after_help = "Example:
  hale backup list --from /mnt/backups/hale")]
    List {
        #[arg(long)]
        from: PathBuf,
    },
    /// Keep the newest N base backups and the archive from the oldest kept one;
    /// delete the rest. Run it as a user allowed to delete there (the node needs
    /// only to create files in the backup directory).
    #[command(after_help = "Example:
  sudo -u hale-prune hale backup prune --from /mnt/backups/hale --keep 14")]
    Prune {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        keep: usize,
    },
}

#[derive(Args)]
#[command(after_help = "Examples:
  hale restore --from /mnt/backups/hale --data /var/lib/hale-restored --identity key.txt
  hale restore --from /mnt/backups/hale --data /var/lib/hale-restored --identity key.txt --to-time 2026-12-03T09:41:00Z
  hale restore --from /mnt/backups/hale --data /var/lib/hale-restored --identity key.txt --to-index 184467
  hale serve --data /var/lib/hale-restored      # then: a new cluster of one; add nodes with hale cluster")]
pub struct RestoreArgs {
    /// The backup directory.
    #[arg(long)]
    from: PathBuf,
    /// A new, empty data directory to restore into.
    #[arg(long)]
    data: PathBuf,
    /// age identity file (AGE-SECRET-KEY-1... lines) of one of the recipients.
    #[arg(long)]
    identity: PathBuf,
    /// Stop before the first command stamped after this time (RFC 3339, e.g.
    /// 2026-12-03T09:41:00Z, or ms since the epoch).
    #[arg(long, conflicts_with = "to_index")]
    to_time: Option<String>,
    /// Stop after this raft log index.
    #[arg(long)]
    to_index: Option<u64>,
    /// The restored node's id in the new cluster it starts.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// The restored node's data centre.
    #[arg(long, default_value = "dc-1")]
    site: String,
}

fn read_config(path: Option<&Path>) -> Result<Option<Config>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
    let cfg: Config = toml::from_str(&text).with_context(|| format!("config file {} is not valid", p.display()))?;
    if let Some(f) = &cfg.store.key_file {
        hale_store::db::use_key_file(f)?;
    }
    Ok(Some(cfg))
}

pub async fn run(a: BackupArgs) -> Result<()> {
    match a.cmd {
        Some(BackupCmd::Verify {
            from,
            identity,
            scratch,
        }) => {
            let ids = hale_backup::read_identities(&identity)?;
            // verify() makes (and removes) its own subdirectory under it.
            let scratch = scratch.unwrap_or_else(std::env::temp_dir);
            let v = hale_backup::restore::verify(&from, &ids, &scratch).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            if !v.ok {
                bail!("verification FAILED for {}: {}", from.display(), v.problems.join("; "));
            }
            eprintln!(
                "verified: base at index {:?} restores to content hash {}; archive reaches {:?}; {:.1} s",
                v.base_last_log_index, v.content_hash, v.archive_last_index, v.seconds
            );
            Ok(())
        }
        Some(BackupCmd::List { from }) => list(&from),
        Some(BackupCmd::Keygen { out }) => {
            let public = hale_backup::generate_identity_file(&out)?;
            println!("{public}");
            eprintln!(
                "secret key written to {}; put the public key above in [backup] recipients",
                out.display()
            );
            Ok(())
        }
        Some(BackupCmd::Prune { from, keep }) => {
            let r = hale_backup::restore::prune(&from, keep)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        None => {
            let cfg = read_config(a.config.as_deref())?;
            let to =
                a.to.or_else(|| cfg.as_ref().and_then(|c| c.backup.dir.clone()))
                    .context("say where to write the backup: --to DIR (or [backup] dir in --config)")?;
            let data = a
                .data
                .or_else(|| cfg.as_ref().map(|c| c.data.clone()))
                .context("say which node to back up: --data NODE_DATA_DIR (or --config)")?;
            let keys = if a.recipients.is_empty() {
                cfg.as_ref().map(|c| c.backup.recipients.clone()).unwrap_or_default()
            } else {
                a.recipients
            };
            let r = Recipients::parse(&keys).context("--recipient age1... (or [backup] recipients in --config)")?;
            let started = std::time::Instant::now();
            let m = tokio::task::spawn_blocking(move || hale_backup::base::take(&data, &to, &r)).await??;
            let s = started.elapsed().as_secs_f64();
            println!("{}", serde_json::to_string_pretty(&m)?);
            eprintln!(
                "base backup at index {:?}: {} bytes of store, {:.1} s ({:.1} MB/s)",
                m.last_log_index,
                m.plain_bytes,
                s,
                m.plain_bytes as f64 / 1e6 / s.max(1e-9)
            );
            Ok(())
        }
    }
}

fn list(from: &Path) -> Result<()> {
    let c = Catalog::load(from)?;
    if c.bases.is_empty() {
        bail!("{} holds no base backup", from.display());
    }
    for b in &c.bases {
        println!(
            "base  index {:>10}  commands to {}  taken {}  {} bytes  {}",
            b.last_log_index.map_or("-".into(), |i| i.to_string()),
            b.last_command_ms.map_or("-".into(), fmt_ms),
            fmt_ms(b.created_ms),
            b.encrypted_bytes,
            b.file
        );
    }
    let last = c.archive_last_index();
    println!(
        "archive  {} segments, last index {}",
        c.segments.len(),
        last.map_or("-".into(), |i| i.to_string())
    );
    if let Some((lo, hi)) = c.restorable() {
        println!("restorable  index {lo} to {hi}");
    }
    match c.verified.last() {
        Some(v) => println!(
            "last verification  {}  {}  base index {:?}{}",
            fmt_ms(v.verified_ms),
            if v.ok { "OK" } else { "FAILED" },
            v.base_last_log_index,
            if v.ok {
                String::new()
            } else {
                format!(": {}", v.problems.join("; "))
            }
        ),
        None => println!("last verification  never (run hale backup verify)"),
    }
    Ok(())
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn parse_time(s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("--to-time {s:?}: give RFC 3339 (2026-12-03T09:41:00Z) or ms since the epoch"))?;
    Ok(t.timestamp_millis())
}

pub async fn restore(a: RestoreArgs) -> Result<()> {
    if a.data.join(hale_store::DB_FILE).exists() || a.data.join(hale_raft::log_store::LOG_FILE).exists() {
        bail!(
            "{} already holds a Hale store; restore into a new, empty directory",
            a.data.display()
        );
    }
    let target = match (&a.to_time, a.to_index) {
        (Some(t), _) => Target::Time(parse_time(t)?),
        (None, Some(i)) => Target::Index(i),
        (None, None) => Target::Latest,
    };
    let ids = hale_backup::read_identities(&a.identity)?;
    let r = hale_backup::restore::restore(&a.from, &ids, &a.data, target).await?;
    hale_backup::restore::reform(&a.data, a.node_id, &a.site).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    eprintln!(
        "restored to index {:?} (last command at {}) from {}: {} entries replayed after the base, {:.1} s ({:.1} MB/s of store)\nstart it with: hale serve --data {} --node-id {}  (a new cluster of one; add nodes with `hale cluster`)",
        r.last_log_index,
        r.last_command_ms.map_or("-".into(), fmt_ms),
        r.base_file,
        r.entries_replayed,
        r.seconds,
        r.plain_bytes as f64 / 1e6 / r.seconds.max(1e-9),
        a.data.display(),
        a.node_id
    );
    Ok(())
}
