//! Downtime packs kept current by the server: every `interval_s`, each
//! configured site's pack is regenerated from this node's local store (so a
//! site replica cut off from the data centres keeps refreshing its packs) and
//! published atomically by `hale-continuity`. `GET /downtime/status` and the
//! metrics show each site's pack age.

use crate::config::Role;
use crate::wire::FhirError;
use crate::App;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hale_continuity::{PackOptions, Protection, Recipients, Zone};
use hale_fhir::IssueCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DowntimeSettings {
    /// Parent directory: each site's packs go in `<out>/<SITE>/`. None: no scheduled packs.
    pub out: Option<PathBuf>,
    /// Seconds between regenerations.
    pub interval_s: u64,
    /// Days after today each pack covers.
    pub days: u32,
    /// Packs kept per site.
    pub keep: usize,
    pub sites: Vec<SitePack>,
}

impl Default for DowntimeSettings {
    fn default() -> Self {
        DowntimeSettings {
            out: None,
            interval_s: 900,
            days: hale_continuity::DAYS_DEFAULT,
            keep: 5,
            sites: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePack {
    pub site: String,
    /// age public keys (`age1...`) that can open this site's packs.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Write this site's packs unencrypted (demos only).
    #[serde(default)]
    pub insecure_plaintext: bool,
}

impl SitePack {
    pub fn protection(&self) -> Result<Protection, String> {
        if !self.recipients.is_empty() {
            Recipients::parse(&self.recipients)
                .map(Protection::Age)
                .map_err(|e| format!("downtime site {}: {e}", self.site))
        } else if self.insecure_plaintext {
            Ok(Protection::InsecurePlaintext)
        } else {
            Err(format!(
                "downtime site {} has no recipients; list age public keys or set insecure_plaintext = true",
                self.site
            ))
        }
    }
}

/// The last outcome per site.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SiteState {
    pub site: String,
    pub dir: Option<String>,
    pub generated_at: Option<String>,
    pub generated_at_ms: Option<i64>,
    pub store_index: Option<u64>,
    pub age_s: Option<u64>,
    pub bytes: Option<u64>,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<u64>,
}

#[derive(Default)]
pub struct DowntimeState {
    sites: Mutex<BTreeMap<String, SiteState>>,
}

impl DowntimeState {
    pub fn snapshot(&self, now_ms: i64) -> Vec<SiteState> {
        self.sites
            .lock()
            .values()
            .cloned()
            .map(|mut s| {
                s.age_s = s.generated_at_ms.map(|g| ((now_ms - g).max(0) / 1000) as u64);
                s
            })
            .collect()
    }
}

/// Check the settings before the node starts serving.
pub fn validate(settings: &DowntimeSettings) -> Result<(), String> {
    if settings.sites.is_empty() {
        return Ok(());
    }
    if settings.out.is_none() {
        return Err("[downtime] lists sites but no `out` directory".into());
    }
    if settings.interval_s == 0 {
        return Err("[downtime] interval_s must be at least 1".into());
    }
    for s in &settings.sites {
        s.protection()?;
    }
    Ok(())
}

fn regenerate(app: &App, site: &SitePack, out: &std::path::Path) -> Result<SiteState, String> {
    let settings = &app.cfg.downtime;
    let mut opts = PackOptions::new(site.site.clone(), crate::now_ms(), site.protection()?);
    opts.days = settings.days;
    opts.zone = Zone::EuropeLondon;
    let started = std::time::Instant::now();
    let pack = app
        .reader
        .with(|conn| hale_continuity::generate(conn, &opts))
        .map_err(|e| e.to_string())?;
    let dir = out.join(site.site.to_ascii_uppercase());
    let written = hale_continuity::write_pack(&dir, &pack, settings.keep).map_err(|e| e.to_string())?;
    let m = &pack.manifest;
    Ok(SiteState {
        site: site.site.clone(),
        dir: Some(written.dir.display().to_string()),
        generated_at: Some(m.generated_at.clone()),
        generated_at_ms: Some(m.generated_at_ms),
        store_index: Some(m.store_index),
        age_s: Some(0),
        bytes: Some(pack.total_bytes()),
        last_error: None,
        last_duration_ms: Some(started.elapsed().as_millis() as u64),
    })
}

/// Regenerate every configured site's pack now and every `interval_s`.
pub fn spawn_scheduler(app: Arc<App>) {
    let Some(out) = app.cfg.downtime.out.clone() else {
        return;
    };
    if app.cfg.downtime.sites.is_empty() {
        return;
    }
    // Packs already on disk from before a restart count until the first run.
    for site in &app.cfg.downtime.sites {
        let dir = out.join(site.site.to_ascii_uppercase());
        if let Ok(Some(cur)) = hale_continuity::current_pack(&dir) {
            app.downtime.sites.lock().insert(
                site.site.clone(),
                SiteState {
                    site: site.site.clone(),
                    dir: Some(cur.dir.display().to_string()),
                    generated_at: Some(cur.manifest.generated_at.clone()),
                    generated_at_ms: Some(cur.manifest.generated_at_ms),
                    store_index: Some(cur.manifest.store_index),
                    ..SiteState::default()
                },
            );
        }
    }
    tokio::spawn(async move {
        let interval = std::time::Duration::from_secs(app.cfg.downtime.interval_s);
        loop {
            if app.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            for site in app.cfg.downtime.sites.clone() {
                let app2 = app.clone();
                let out2 = out.clone();
                let site2 = site.clone();
                let res = tokio::task::spawn_blocking(move || regenerate(&app2, &site2, &out2))
                    .await
                    .unwrap_or_else(|e| Err(format!("pack generation panicked: {e}")));
                let mut sites = app.downtime.sites.lock();
                match res {
                    Ok(state) => {
                        tracing::info!(site = %site.site, dir = ?state.dir, ms = state.last_duration_ms, "downtime pack regenerated");
                        sites.insert(site.site.clone(), state);
                    }
                    Err(e) => {
                        tracing::error!(site = %site.site, error = %e, "downtime pack regeneration failed; the previous pack stays current");
                        let entry = sites.entry(site.site.clone()).or_insert_with(|| SiteState {
                            site: site.site.clone(),
                            ..SiteState::default()
                        });
                        entry.last_error = Some(e);
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
}

pub async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.auth.authenticate(&headers).await {
        Ok(p) if matches!(p.role, Role::Admin | Role::Service) => {}
        Ok(_) => {
            return FhirError::new(
                StatusCode::FORBIDDEN,
                IssueCode::Forbidden,
                "downtime pack status needs an admin or service token",
            )
            .into_response()
        }
        Err(e) => return e.into_response(),
    }
    Json(serde_json::json!({
        "interval_s": app.cfg.downtime.interval_s,
        "sites": app.downtime.snapshot(crate::now_ms()),
    }))
    .into_response()
}
