//! `hale cert init|issue`: a cluster CA and the certificates it signs (rcgen),
//! for TLS on the API and for raft mTLS between nodes (a node certificate
//! names `node-<id>.<role>.hale`; see hale-raft `peer_tls`).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CertArgs {
    #[command(subcommand)]
    cmd: CertCmd,
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create the cluster CA: DIR/ca.pem (share it with clients) and DIR/ca-key.pem (keep it offline).
    Init(InitArgs),
    /// Issue a certificate signed by the CA in DIR: DIR/NAME.pem and DIR/NAME-key.pem.
    Issue(IssueArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Directory for ca.pem and ca-key.pem (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "Hale cluster CA")]
    cn: String,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Voter,
    Learner,
}

#[derive(Args)]
struct IssueArgs {
    /// Directory holding ca.pem and ca-key.pem; the new files are written here too.
    #[arg(long)]
    dir: PathBuf,
    /// File name stem (NAME.pem, NAME-key.pem) and the certificate's common name.
    #[arg(long)]
    name: String,
    /// For a node's certificate: its id, recorded as the DNS name node-<id>.<role>.hale
    /// (which raft mTLS will check).
    #[arg(long, requires = "role")]
    node_id: Option<u64>,
    /// For a node's certificate: voter (data centre) or learner (hospital site).
    /// Only voter certificates may vote or lead; promoting a learner needs a voter certificate.
    #[arg(long, value_enum, requires = "node_id")]
    role: Option<Role>,
    /// A certificate for tools on the raft port (status, fault injection):
    /// names `operator.hale`.
    #[arg(long, conflicts_with = "node_id")]
    operator: bool,
    /// DNS names clients use to reach this server (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    dns: Vec<String>,
    /// IP addresses clients use to reach this server (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    ip: Vec<IpAddr>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 397)]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(a: CertArgs) -> Result<()> {
    match a.cmd {
        CertCmd::Init(a) => init(&a),
        CertCmd::Issue(a) => issue(&a),
    }
}

/// The DNS name that identifies a node and its role in its certificate.
pub fn node_name(node_id: u64, voter: bool) -> String {
    hale_raft::peer_tls::node_name(node_id, voter)
}

fn validity(p: &mut CertificateParams, days: u32) -> Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let ymd = |d: chrono::NaiveDate| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    // From yesterday, so a clock a little behind still accepts it.
    let today = chrono::Utc::now().date_naive();
    p.not_before = ymd(today - chrono::Days::new(1));
    p.not_after = ymd(today + chrono::Days::new(days as u64));
    Ok(())
}

fn init(a: &InitArgs) -> Result<()> {
    let (cert_path, key_path) = (a.dir.join("ca.pem"), a.dir.join("ca-key.pem"));
    let cert = new_ca(&a.dir, &a.cn, a.days, a.force)?;
    println!(
        "CA \"{}\" (serial {}), valid {} days:\n  {}  certificate: give it to clients and nodes\n  {}  private key: keep it offline",
        a.cn,
        hale_server::tls::serial_hex(cert.der()).unwrap_or_default(),
        a.days,
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Create the CA in `dir`: `ca.pem` and `ca-key.pem`.
fn new_ca(dir: &Path, cn: &str, days: u32, force: bool) -> Result<rcgen::Certificate> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    refuse_overwrite(&[&cert_path, &key_path], force)?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, days)?;
    let cert = p.self_signed(&key).context("cannot create the CA certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&cert_path, &cert.pem(), false, force)?;
    Ok(cert)
}

/// The certificates `hale up` and the chaos harness give a local cluster:
/// a CA in `dir` and, for each `(node id, voter)`, `node-<id>.pem` naming it,
/// plus `operator.pem` for the harness itself. Files already there are kept
/// (a resumed cluster keeps its certificates).
pub fn local_cluster_certs(dir: &Path, nodes: &[(u64, bool)]) -> Result<()> {
    if !dir.join("ca.pem").exists() {
        new_ca(dir, "Hale local cluster CA", 3650, true)?;
    }
    let loopback = vec![
        SanType::DnsName("localhost".try_into().context("localhost")?),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ];
    let mut wanted: Vec<(String, String)> = nodes
        .iter()
        .map(|(id, voter)| (format!("node-{id}"), node_name(*id, *voter)))
        .collect();
    wanted.push(("operator".into(), hale_raft::peer_tls::OPERATOR_NAME.into()));
    for (name, identity) in wanted {
        if dir.join(format!("{name}.pem")).exists() && dir.join(format!("{name}-key.pem")).exists() {
            continue;
        }
        let mut sans = loopback.clone();
        sans.push(SanType::DnsName(identity.try_into().context("node name")?));
        sign(dir, &name, sans, 3650, true)?;
    }
    Ok(())
}

fn issue(a: &IssueArgs) -> Result<()> {
    let name = a.name.as_str();
    if name.is_empty()
        || name == "ca"
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        bail!("--name must be letters, digits, '.', '-' or '_', and not `ca` (got `{name}`)");
    }
    let mut sans = Vec::new();
    for d in &a.dns {
        sans.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .with_context(|| format!("--dns {d} is not a valid DNS name"))?,
        ));
    }
    sans.extend(a.ip.iter().map(|ip| SanType::IpAddress(*ip)));
    if let (Some(id), Some(role)) = (a.node_id, a.role) {
        sans.push(SanType::DnsName(
            node_name(id, role == Role::Voter).try_into().context("node name")?,
        ));
    }
    if a.operator {
        sans.push(SanType::DnsName(
            hale_raft::peer_tls::OPERATOR_NAME.try_into().context("operator name")?,
        ));
    }
    if sans.is_empty() {
        bail!("name at least one --dns or --ip that clients use to reach the server (or --node-id and --role, or --operator)");
    }
    let (cert_path, key_path) = (a.dir.join(format!("{name}.pem")), a.dir.join(format!("{name}-key.pem")));
    let (cert, p) = sign(&a.dir, name, sans, a.days, a.force)?;
    let names: Vec<String> = p
        .subject_alt_names
        .iter()
        .map(|s| match s {
            SanType::DnsName(d) => d.to_string(),
            SanType::IpAddress(ip) => ip.to_string(),
            _ => String::new(),
        })
        .collect();
    println!(
        "certificate \"{name}\" (serial {}) for {}, valid {} days:\n  {}\n  {}  private key\nserve with: hale serve --tls-cert {} --tls-key {}",
        hale_server::tls::serial_hex(cert.der()).unwrap_or_default(),
        names.join(", "),
        a.days,
        cert_path.display(),
        key_path.display(),
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Sign a certificate for `sans` with the CA in `dir`: `dir/NAME.pem` and `dir/NAME-key.pem`.
fn sign(
    dir: &Path,
    name: &str,
    sans: Vec<SanType>,
    days: u32,
    force: bool,
) -> Result<(rcgen::Certificate, CertificateParams)> {
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    refuse_overwrite(&[&cert_path, &key_path], force)?;

    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_cert_path).with_context(|| {
        format!(
            "cannot read the CA certificate {}; create the CA first with `hale cert init --dir {}`",
            ca_cert_path.display(),
            dir.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("cannot read the CA key {}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a private key in PEM", ca_key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a CA certificate in PEM", ca_cert_path.display()))?;

    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Server for the API; client too, for raft mTLS between nodes.
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days)?;
    let cert = p.signed_by(&key, &issuer).context("cannot sign the certificate")?;
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&cert_path, &cert.pem(), false, force)?;
    Ok((cert, p))
}

fn refuse_overwrite(paths: &[&Path], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            bail!("{} exists; pass --force to replace it", p.display());
        }
    }
    Ok(())
}

/// Write `text` to `path`, mode 0600 for private keys. Without `force`, never
/// replaces a file (create_new), even one that appeared since the check.
fn write_file(path: &Path, text: &str, private: bool, force: bool) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if private {
        // An existing file replaced with --force keeps its old mode otherwise.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
