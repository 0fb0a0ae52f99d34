//! Server configuration. The binary reads it from a TOML file, then lets
//! environment variables and flags override it.

pub use hale_store::command::References;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data: PathBuf,
    /// Public base URL used in `Location` and `fullUrl`; default: from the Host header.
    pub base_url: Option<String>,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub demo: DemoSettings,
    /// Replication: node id, raft listener, site, timeouts.
    pub cluster: hale_raft::RaftSettings,
    /// Downtime packs regenerated on a schedule.
    pub downtime: crate::downtime::DowntimeSettings,
    /// Outage recovery: reasonable notice, rebooking horizon, letter timing.
    pub outage: crate::outage::OutageSettings,
    /// Patient contact: the delivery worker's adapters (SMTP, GOV.UK Notify, letters) and bounds.
    /// Off unless an adapter is configured.
    pub notify: crate::outbox::NotifySettings,
    /// Whether writes through the API must reference resources this store holds
    /// (`enforce`, the default) or may point elsewhere (`off`, for loading other
    /// systems' data). Carried in each command, so replicas apply it alike.
    pub references: References,
    /// TLS on the API: certificate and key files (PEM). Off unless both are set.
    pub tls: TlsSettings,
    /// Patient-level access: legitimate relationship, break-glass (`[access]`).
    pub access: crate::access::AccessSettings,
    /// Encryption at rest of the node's SQLite files (`[store]`).
    pub store: StoreSettings,
    /// Request classes and which to shed first under load (`[admission]`).
    pub admission: crate::admission::AdmissionSettings,
    /// Backups, the log archive and their verification (`[backup]`).
    pub backup: crate::backup::BackupSettings,
    /// Drills `serve` runs on a schedule (`[drills]`).
    pub drills: crate::drill::DrillSettings,
}

/// `[store]`: the key every SQLite file under the data directory is encrypted
/// with (a build with the `sqlcipher` feature; others refuse a key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// A file holding the key: 64 hexadecimal characters (`openssl rand -hex 32`).
    /// Env: HALE_STORE_KEY_FILE. Every node of a cluster uses the same key.
    pub key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data: PathBuf::from("./hale-data"),
            base_url: None,
            limits: Limits::default(),
            auth: AuthConfig::default(),
            demo: DemoSettings::default(),
            cluster: hale_raft::RaftSettings::default(),
            downtime: crate::downtime::DowntimeSettings::default(),
            outage: crate::outage::OutageSettings::default(),
            notify: crate::outbox::NotifySettings::default(),
            references: References::Enforce,
            tls: TlsSettings::default(),
            access: crate::access::AccessSettings::default(),
            store: StoreSettings::default(),
            admission: crate::admission::AdmissionSettings::default(),
            backup: crate::backup::BackupSettings::default(),
            drills: crate::drill::DrillSettings::default(),
        }
    }
}

/// `[tls]`: serve the API over TLS with this certificate chain and key
/// (PEM files, reloaded on SIGHUP).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether TLS is configured (both files named).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// The two files, `None` when neither is set, an error when only one is.
    pub fn files(&self) -> Result<Option<(&std::path::Path, &std::path::Path)>, String> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("TLS needs both a certificate and a key: the certificate is set (tls.cert, HALE_TLS_CERT or --tls-cert) but the key is not (tls.key, HALE_TLS_KEY or --tls-key)".into()),
            (None, Some(_)) => Err("TLS needs both a certificate and a key: the key is set (tls.key, HALE_TLS_KEY or --tls-key) but the certificate is not (tls.cert, HALE_TLS_CERT or --tls-cert)".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted.
    pub body_bytes_max: usize,
    /// Entries in one batch or transaction Bundle.
    pub bundle_entries_max: usize,
    /// Read audit records waiting to be committed; a full queue slows readers down.
    pub audit_queue_max: usize,
    /// Read connections to SQLite.
    pub readers: usize,
    /// A request that takes longer than this is answered with 503.
    pub request_timeout_ms: u64,
    /// FHIR requests being served at once; more are answered 503 at once
    /// (with Retry-After) rather than queued without bound.
    pub requests_inflight_max: usize,
    /// Writes a cut-off node may hold in its site journal, waiting to be replayed.
    pub journal_entries_max: u64,
    /// Bytes of those writes.
    pub journal_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 8 * 1024 * 1024,
            bundle_entries_max: 5_000,
            audit_queue_max: 65_536,
            readers: 4,
            request_timeout_ms: 30_000,
            requests_inflight_max: 4_096,
            journal_entries_max: hale_journal::ENTRIES_MAX_DEFAULT,
            journal_bytes_max: hale_journal::BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Let requests without a token in, as user "anonymous" with the admin role.
    /// For demos on a laptop only: the server logs a warning at start and every minute.
    pub open_access: bool,
    /// Static bearer tokens: for development, served on loopback only.
    pub tokens: Vec<TokenEntry>,
    /// `[auth.oidc]`: access tokens (JWTs) from the trust's OpenID provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<hale_auth::OidcSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub token: String,
    pub user: String,
    pub role: Role,
    /// The site the user works at (used for patient-level access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// A patient context: the token sees this patient's compartment only (as
    /// a SMART `patient/` token does). For development and tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Clinician,
    Clerk,
    Admin,
    Service,
    /// Reviews the audit trail ("who looked at this patient"): reads AuditEvent
    /// and Patient demographics, nothing clinical, and writes nothing.
    #[serde(rename = "privacy-officer")]
    PrivacyOfficer,
}

impl Role {
    /// The role named `s` (`clinician`, `clerk`, `admin`, `service`, `privacy-officer`).
    pub fn parse_name(s: &str) -> Option<Role> {
        match s {
            "clinician" => Some(Role::Clinician),
            "clerk" => Some(Role::Clerk),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            "privacy-officer" => Some(Role::PrivacyOfficer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Clerk => "clerk",
            Role::Admin => "admin",
            Role::Service => "service",
            Role::PrivacyOfficer => "privacy-officer",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSettings {
    /// Load the synthetic health board when the store is empty.
    pub enabled: bool,
    pub patients: usize,
    pub seed: u64,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings {
            enabled: false,
            patients: 10_000,
            seed: 2013,
        }
    }
}

/// The site the demo clinician works at (a site of the demo board), for
/// patient-level access: its patients booked there are in a legitimate
/// relationship, others need break-glass.
pub const DEMO_SITE: &str = "QEH";

/// Tokens installed by `--demo` when the config names none. Printed at start.
pub fn demo_tokens() -> Vec<TokenEntry> {
    vec![
        TokenEntry {
            token: "demo-clinician".into(),
            user: "dr.demo".into(),
            role: Role::Clinician,
            site: Some(DEMO_SITE.into()),
            patient: None,
        },
        TokenEntry {
            token: "demo-clerk".into(),
            user: "clerk.demo".into(),
            role: Role::Clerk,
            site: None,
            patient: None,
        },
        TokenEntry {
            token: "demo-admin".into(),
            user: "admin.demo".into(),
            role: Role::Admin,
            site: None,
            patient: None,
        },
    ]
}
