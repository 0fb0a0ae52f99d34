//! `hale downtime-pack`: write one site's downtime pack (clinic lists and
//! patient summaries for today and the next days, PDF and CSV, encrypted with
//! age) from a node's local store. The work is in `hale-continuity`; this is
//! argument parsing and the clock.

use anyhow::{bail, Context, Result};
use clap::Args;
use hale_continuity::{PackOptions, Protection, Recipients, Zone};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct DowntimePackArgs {
    /// Site code, e.g. QEH (the site extension on the site's Locations).
    #[arg(long)]
    pub site: String,
    /// Days after today to cover; today is always included.
    #[arg(long, default_value_t = hale_continuity::DAYS_DEFAULT)]
    pub days: u32,
    /// Output directory: packs go in OUT/packs/, and OUT/current names the newest complete one.
    #[arg(long)]
    pub out: PathBuf,
    /// age public key (age1...) to encrypt every file for; repeat for several recipients.
    #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
    pub recipients: Vec<String>,
    /// Write patient data unencrypted. Needed when no --recipient is given; for demos and tests only.
    #[arg(long, conflicts_with = "recipients")]
    pub insecure_plaintext: bool,
    /// Data directory of the node whose store is read (safe while the node runs).
    #[arg(long, default_value = "./hale-data", env = "HALE_DATA")]
    pub data: PathBuf,
    /// Packs to keep in --out (the newest are kept).
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    /// Print times and take calendar days in UTC instead of UK civil time (GMT/BST).
    #[arg(long)]
    pub utc: bool,
}

pub fn run(args: DowntimePackArgs) -> Result<()> {
    let protection = if !args.recipients.is_empty() {
        Protection::Age(Recipients::parse(&args.recipients)?)
    } else if args.insecure_plaintext {
        tracing::warn!("--insecure-plaintext: the pack's patient data is written UNENCRYPTED");
        Protection::InsecurePlaintext
    } else {
        bail!(
            "give --recipient AGE_PUBLIC_KEY (repeatable) to encrypt the pack, \
             or --insecure-plaintext to write patient data unencrypted"
        );
    };
    if !args.data.join(hale_store::DB_FILE).exists() {
        bail!(
            "no Hale store in {}; point --data at a node's data directory",
            args.data.display()
        );
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis() as i64;
    let mut opts = PackOptions::new(args.site.clone(), now_ms, protection);
    opts.days = args.days;
    opts.zone = if args.utc { Zone::Utc } else { Zone::EuropeLondon };

    let started = std::time::Instant::now();
    let reader = hale_store::Reader::open(&args.data, 1)
        .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
    let pack = reader.with(|conn| hale_continuity::generate(conn, &opts))?;
    let generated = started.elapsed();
    let written = hale_continuity::write_pack(&args.out, &pack, args.keep)
        .with_context(|| format!("cannot write the pack into {}", args.out.display()))?;
    let m = &pack.manifest;
    println!(
        "{} ({}), {} to {}: {} sessions, {} appointments, {} patients; store index {}",
        m.site,
        m.site_name,
        m.range.first_day,
        m.range.last_day,
        m.counts.sessions,
        m.counts.appointments,
        m.counts.patients,
        m.store_index
    );
    for f in &pack.files {
        let pages = f.pages.map(|p| format!(", {p} pages")).unwrap_or_default();
        println!("{:>10}  {}  sha256 {}{pages}", f.bytes.len(), f.name, f.sha256);
    }
    println!(
        "{:>10}  bytes in {} (generated in {} ms, {} total)",
        pack.total_bytes(),
        written.dir.display(),
        generated.as_millis(),
        started.elapsed().as_millis()
    );
    for failure in &written.prune_failures {
        tracing::warn!(%failure, "could not remove an old pack");
    }
    Ok(())
}
