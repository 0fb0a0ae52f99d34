//! Admission control: which FHIR requests this node serves when it cannot
//! serve them all (after a failure, or under overload), and the operator's
//! phased reopening (`hale admit`, `POST /ops/admit`).
//!
//! Requests fall into ordered classes from `[admission]` (class 1 is the most
//! urgent), by the first rule that matches the caller's role, site, user
//! (client) or the request path. A request of class `k` is served only if
//! - `k` is within the operator's level (classes `1..=operator`; of the
//!   operator's own class, only `percent`% of callers, chosen by a hash of
//!   the user so one clerk is either in or out),
//! - `k` is within the automatic level, which a moving average of request
//!   latency lowers one class at a time and raises again slowly,
//! - and the node's in-flight FHIR requests (all classes) are below class
//!   `k`'s ceiling, a share of `limits.requests_inflight_max` that is smaller
//!   for lower classes, so they hit their ceiling first.
//!
//! Otherwise it is answered 503 with `Retry-After` and an OperationOutcome
//! saying which class, why and when to retry. Everything else on the router
//! (`/ops/*`, `/cluster/*`, `/healthz`, `/readyz`, `/metrics`, the UI's own
//! pages) never passes through here; [`exempt`] also lets them through.
//!
//! **Architecture Invariant:** admission state is this node's alone (never
//! replicated, reset at start to `[admission]`'s start level). The decisions
//! ([`Policy::classify`], [`Policy::decide`], [`Controller`]) are pure: no
//! clock, no IO; the runtime half ([`Admission`], [`admit`]) only counts,
//! reads a monotonic clock and passes both in.

use crate::auth::Principal;
use crate::cluster::admin;
use crate::config::Role;
use crate::wire::FhirError;
use crate::App;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hale_fhir::IssueCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Classes in `[admission]`.
pub const CLASSES_MAX: usize = 16;
/// Rules in `[admission]`.
pub const RULES_MAX: usize = 256;
/// Values in one list of a rule (roles, sites, clients, routes).
pub const RULE_VALUES_MAX: usize = 256;
/// Weight of one new latency sample in the moving average, as 1/N.
pub const EWMA_SAMPLES: f64 = 8.0;

/// Paths that admission control never sheds: the operators' way in.
pub const EXEMPT_PREFIXES: &[&str] = &["/ops/", "/cluster/", "/healthz", "/readyz", "/metrics"];

// ---------------------------------------------------------------------------
// Configuration

/// `[admission]`: request classes and when to shed them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Classes, most urgent first (class 1). None: every FHIR request is in
    /// one class, and only `limits.requests_inflight_max` applies.
    pub classes: Vec<ClassSettings>,
    /// In order; the first rule that matches a request decides its class.
    pub rules: Vec<RuleSettings>,
    /// The class (by name) of a request no rule matches; default: the last class.
    pub default_class: Option<String>,
    /// A moving average of request latency above this closes the lowest
    /// admitted class, one class per `close_step_ms`; 0 turns the latency
    /// signal off.
    pub latency_target_ms: u64,
    /// Below this percent of the target, one closed class reopens per `reopen_step_ms`.
    pub latency_reopen_percent: u64,
    /// Least time between two automatic closures.
    pub close_step_ms: u64,
    /// Least time between an automatic change and a reopening.
    pub reopen_step_ms: u64,
    /// `Retry-After` of a request shed for load (in-flight ceiling or latency).
    pub retry_after_s: u64,
    /// `Retry-After` of a request the operator's level keeps out.
    pub closed_retry_after_s: u64,
    /// The operator level a node starts at: classes up to this one (by name)
    /// admitted; default: all. A node restarted after a failure can start
    /// with only the most urgent class and be opened with `hale admit`.
    pub start_class: Option<String>,
    /// Of `start_class`, this percent of users admitted (1-100).
    pub start_percent: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            classes: Vec::new(),
            rules: Vec::new(),
            default_class: None,
            latency_target_ms: 0,
            latency_reopen_percent: 50,
            close_step_ms: 1_000,
            reopen_step_ms: 5_000,
            retry_after_s: 1,
            closed_retry_after_s: 60,
            start_class: None,
            start_percent: 100,
        }
    }
}

/// One `[[admission.classes]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSettings {
    pub name: String,
    /// The share of `limits.requests_inflight_max` this class may use (the
    /// node's in-flight requests of every class count against it). Default
    /// for class k of n: 100 * (n - k + 1) / n, so class 1 may use it all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_percent: Option<u64>,
}

/// One `[[admission.rules]]`: every list given must match (a list matches
/// when any of its values does); an empty list is not a condition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSettings {
    /// The class (by name) of a request this rule matches.
    pub class: String,
    /// The caller's role.
    pub roles: Vec<Role>,
    /// The caller's site (from the token's site claim, the static token, or the account).
    pub sites: Vec<String>,
    /// The caller's user name: a static token's `user`, the access token's user
    /// claim (a backend client's client id).
    pub clients: Vec<String>,
    /// Path prefixes, e.g. `/$export` (also `/$export-status`, `/$export-file`), `/Appointment`.
    pub routes: Vec<String>,
}

// ---------------------------------------------------------------------------
// The pure decision

/// Who asks, as classification sees it (nothing when authentication failed:
/// then only route conditions can match, and the request is refused later).
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    pub role: Option<Role>,
    pub site: Option<&'a str>,
    pub client: Option<&'a str>,
}

impl<'a> Who<'a> {
    pub fn of(p: &'a Principal) -> Who<'a> {
        Who {
            role: Some(p.role),
            site: p.site.as_deref(),
            client: Some(&p.user),
        }
    }
}

#[derive(Debug, Clone)]
struct Class {
    name: String,
    inflight_percent: u64,
    /// In-flight requests (of every class) below which this class is admitted.
    ceiling: usize,
}

#[derive(Debug, Clone)]
struct Rule {
    /// 1-based.
    class: u32,
    roles: Vec<Role>,
    sites: Vec<String>,
    clients: Vec<String>,
    routes: Vec<String>,
}

impl Rule {
    fn matches(&self, who: &Who, path: &str) -> bool {
        let any = |list: &[String], v: Option<&str>| list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v));
        (self.roles.is_empty() || who.role.is_some_and(|r| self.roles.contains(&r)))
            && any(&self.sites, who.site)
            && any(&self.clients, who.client)
            && (self.routes.is_empty() || self.routes.iter().any(|r| path.starts_with(r.as_str())))
    }
}

/// The configured classes and rules, and the in-flight budget: what decides.
#[derive(Debug, Clone)]
pub struct Policy {
    classes: Vec<Class>,
    rules: Vec<Rule>,
    /// 1-based.
    default_class: u32,
    inflight_max: usize,
}

/// The levels a decision is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// The operator admits classes `1..=operator_class`...
    pub operator_class: u32,
    /// ...and of `operator_class` itself, this percent of users (1-100).
    pub operator_percent: u64,
    /// The latency signal admits classes `1..=auto_class`.
    pub auto_class: u32,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The operator's level is below the request's class.
    Closed { operator_class: u32 },
    /// The request's class is the operator's and its user is outside the percent admitted.
    Percent { percent: u64 },
    /// The latency signal closed the class.
    Latency { auto_class: u32 },
    /// The node's in-flight requests are at the class's ceiling.
    Inflight { inflight: usize, ceiling: usize },
}

impl Shed {
    pub fn reason(self) -> &'static str {
        match self {
            Shed::Closed { .. } => "operator",
            Shed::Percent { .. } => "percent",
            Shed::Latency { .. } => "latency",
            Shed::Inflight { .. } => "inflight",
        }
    }
    fn index(self) -> usize {
        match self {
            Shed::Closed { .. } => 0,
            Shed::Percent { .. } => 1,
            Shed::Latency { .. } => 2,
            Shed::Inflight { .. } => 3,
        }
    }
}

const REASONS: [&str; 4] = ["operator", "percent", "latency", "inflight"];

/// The bucket (0-99) of a user for the operator's percent: FNV-1a of the
/// name, so the same user is in or out on every request and every node.
pub fn user_bucket(user: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 100
}

/// Whether `path` is never shed (operations, cluster admin, health, metrics).
pub fn exempt(path: &str) -> bool {
    EXEMPT_PREFIXES
        .iter()
        .any(|p| path.starts_with(p) || (p.ends_with('/') && path == &p[..p.len() - 1]))
}

impl Policy {
    /// From `[admission]` and `limits.requests_inflight_max`; an error says
    /// which setting is wrong and how to fix it.
    pub fn new(s: &AdmissionSettings, inflight_max: usize) -> Result<Policy, String> {
        let inflight_max = inflight_max.max(1);
        if s.classes.len() > CLASSES_MAX {
            return Err(format!(
                "[admission] names {} classes; at most {CLASSES_MAX} are allowed",
                s.classes.len()
            ));
        }
        if s.rules.len() > RULES_MAX {
            return Err(format!(
                "[admission] has {} rules; at most {RULES_MAX} are allowed",
                s.rules.len()
            ));
        }
        let settings: Vec<ClassSettings> = if s.classes.is_empty() {
            if !s.rules.is_empty() || s.default_class.is_some() || s.start_class.is_some() {
                return Err("[admission] has rules or names a class but lists no [[admission.classes]]; add the classes, most urgent first".into());
            }
            vec![ClassSettings {
                name: "all".into(),
                inflight_percent: Some(100),
            }]
        } else {
            s.classes.clone()
        };
        let n = settings.len() as u64;
        let mut classes = Vec::new();
        for (i, c) in settings.iter().enumerate() {
            let name = c.name.trim();
            if name.is_empty() {
                return Err(format!("[[admission.classes]] number {} has no name", i + 1));
            }
            if classes.iter().any(|x: &Class| x.name == name) {
                return Err(format!("[admission] names class '{name}' twice"));
            }
            let pct = c.inflight_percent.unwrap_or(100 * (n - i as u64) / n);
            if !(1..=100).contains(&pct) {
                return Err(format!(
                    "[admission] class '{name}': inflight_percent must be 1-100, not {pct}"
                ));
            }
            if let Some(prev) = classes.last().map(|x: &Class| x.inflight_percent) {
                if pct > prev {
                    return Err(format!(
                        "[admission] class '{name}' may use {pct}% of the in-flight budget, more than the more urgent class before it ({prev}%); give lower classes smaller shares"
                    ));
                }
            }
            // At least one request for any class, or a class could never run.
            let ceiling = ((inflight_max as u64 * pct).div_ceil(100)).max(1) as usize;
            classes.push(Class {
                name: name.to_string(),
                inflight_percent: pct,
                ceiling,
            });
        }
        let find = |what: &str, name: &str| -> Result<u32, String> {
            classes
                .iter()
                .position(|c| c.name == name.trim())
                .map(|i| i as u32 + 1)
                .ok_or_else(|| {
                    format!(
                        "[admission] {what} names class '{name}', which is not one of [[admission.classes]] ({})",
                        classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })
        };
        let mut rules = Vec::new();
        for (i, r) in s.rules.iter().enumerate() {
            let class = find(&format!("rule {}", i + 1), &r.class)?;
            if r.roles.is_empty() && r.sites.is_empty() && r.clients.is_empty() && r.routes.is_empty() {
                return Err(format!(
                    "[admission] rule {} (class '{}') has no condition; give it roles, sites, clients or routes, or use default_class",
                    i + 1,
                    r.class
                ));
            }
            let lens = [r.roles.len(), r.sites.len(), r.clients.len(), r.routes.len()];
            if lens.iter().any(|l| *l > RULE_VALUES_MAX) {
                return Err(format!(
                    "[admission] rule {} has a list of more than {RULE_VALUES_MAX} values",
                    i + 1
                ));
            }
            if let Some(bad) = r.routes.iter().find(|p| !p.starts_with('/')) {
                return Err(format!(
                    "[admission] rule {}: route '{bad}' must be a path prefix starting with '/', e.g. '/$export'",
                    i + 1
                ));
            }
            rules.push(Rule {
                class,
                roles: r.roles.clone(),
                sites: r.sites.clone(),
                clients: r.clients.clone(),
                routes: r.routes.clone(),
            });
        }
        let default_class = match &s.default_class {
            Some(name) => find("default_class", name)?,
            None => classes.len() as u32,
        };
        Ok(Policy {
            classes,
            rules,
            default_class,
            inflight_max,
        })
    }

    pub fn class_count(&self) -> u32 {
        self.classes.len() as u32
    }

    /// The name of class `k` (1-based).
    pub fn name(&self, k: u32) -> &str {
        &self.classes[(k.clamp(1, self.class_count()) - 1) as usize].name
    }

    /// In-flight requests (of every class) below which class `k` is admitted.
    pub fn ceiling(&self, k: u32) -> usize {
        self.classes[(k.clamp(1, self.class_count()) - 1) as usize].ceiling
    }

    /// Whether any rule looks at the caller (so the request must be authenticated first).
    pub fn needs_principal(&self) -> bool {
        self.rules
            .iter()
            .any(|r| !(r.roles.is_empty() && r.sites.is_empty() && r.clients.is_empty()))
    }

    /// The class (1-based) of a request: the first matching rule's, else the default.
    pub fn classify(&self, who: &Who, path: &str) -> u32 {
        self.rules
            .iter()
            .find(|r| r.matches(who, path))
            .map(|r| r.class)
            .unwrap_or(self.default_class)
    }

    /// Whether a request of class `class` from a user in `bucket` (see
    /// [`user_bucket`]) is admitted while `inflight` requests are being
    /// served (not counting it).
    pub fn decide(&self, class: u32, bucket: u64, inflight: usize, levels: Levels) -> Result<(), Shed> {
        if class > levels.operator_class {
            return Err(Shed::Closed {
                operator_class: levels.operator_class,
            });
        }
        if class > levels.auto_class {
            return Err(Shed::Latency {
                auto_class: levels.auto_class,
            });
        }
        if class == levels.operator_class && bucket >= levels.operator_percent {
            return Err(Shed::Percent {
                percent: levels.operator_percent,
            });
        }
        let ceiling = self.ceiling(class);
        if inflight >= ceiling {
            return Err(Shed::Inflight { inflight, ceiling });
        }
        Ok(())
    }

    /// What a shed request is told: which class, why, when to retry.
    pub fn explain(&self, class: u32, why: Shed, retry_after_s: u64, latency: (f64, u64)) -> String {
        let c = format!("class {class} ({})", self.name(class));
        let range = |k: u32| {
            if k <= 1 {
                format!("class 1 ({}) only", self.name(1))
            } else {
                format!("classes 1-{k} only")
            }
        };
        let why = match why {
            Shed::Closed { operator_class } => format!(
                "{c} is not being served on this node yet: an operator admits {} while service is restored in steps (hale admit)",
                range(operator_class)
            ),
            Shed::Percent { percent } => format!(
                "{c} is being reopened in steps: {percent}% of its users are admitted on this node so far, and this user is not yet one of them"
            ),
            Shed::Latency { auto_class } => format!(
                "{c} is paused on this node: its recent request latency ({:.0} ms, moving average) is above the target of {} ms, so it admits {} until latency recovers",
                latency.0,
                latency.1,
                range(auto_class)
            ),
            Shed::Inflight { inflight, ceiling } => {
                if ceiling >= self.inflight_max {
                    format!(
                        "the server is serving its limit of {} requests at once",
                        self.inflight_max
                    )
                } else {
                    format!(
                        "{c} is shed: this node has {inflight} requests in flight, and this class may start one only while fewer than {ceiling} of its {} places are taken (more urgent classes keep the rest)",
                        self.inflight_max
                    )
                }
            }
        };
        format!("{why}; retry in {retry_after_s} s")
    }
}

/// The automatic level: a moving average of request latency lowers it one
/// class per `close_step_ms` while above the target, and raises it one class
/// per `reopen_step_ms` once below `reopen_percent` of the target (or when
/// nothing is being served: there is no latency to protect). Pure: the caller
/// passes the time.
#[derive(Debug, Clone)]
pub struct Controller {
    classes: u32,
    target_ms: u64,
    reopen_percent: u64,
    close_step_ms: u64,
    reopen_step_ms: u64,
    ewma_ms: Option<f64>,
    auto_class: u32,
    last_change_ms: u64,
    samples_since_change: u64,
}

impl Controller {
    pub fn new(classes: u32, s: &AdmissionSettings) -> Controller {
        Controller {
            classes,
            target_ms: s.latency_target_ms,
            reopen_percent: s.latency_reopen_percent.min(100),
            close_step_ms: s.close_step_ms,
            reopen_step_ms: s.reopen_step_ms,
            ewma_ms: None,
            auto_class: classes,
            last_change_ms: 0,
            samples_since_change: 0,
        }
    }

    pub fn auto_class(&self) -> u32 {
        self.auto_class
    }

    pub fn ewma_ms(&self) -> Option<f64> {
        self.ewma_ms
    }

    /// One served request's latency.
    pub fn record(&mut self, latency_ms: f64) {
        self.ewma_ms = Some(match self.ewma_ms {
            None => latency_ms,
            Some(e) => e + (latency_ms - e) / EWMA_SAMPLES,
        });
        self.samples_since_change += 1;
    }

    /// Move the automatic level if it is time; `inflight` is what the node
    /// serves now. Answers the new level when it changed.
    pub fn tick(&mut self, now_ms: u64, inflight: usize) -> Option<u32> {
        if self.target_ms == 0 {
            return None;
        }
        let since = now_ms.saturating_sub(self.last_change_ms);
        let ewma = self.ewma_ms.unwrap_or(0.0);
        let over = self.samples_since_change > 0 && ewma > self.target_ms as f64;
        let under = ewma <= (self.target_ms * self.reopen_percent) as f64 / 100.0;
        let idle = inflight == 0 && self.samples_since_change == 0;
        if over && self.auto_class > 1 && since >= self.close_step_ms {
            self.auto_class -= 1;
        } else if (under || idle) && self.auto_class < self.classes && since >= self.reopen_step_ms {
            self.auto_class += 1;
            // Nothing measured yet at the new level.
            if idle {
                self.ewma_ms = None;
            }
        } else {
            return None;
        }
        self.last_change_ms = now_ms;
        self.samples_since_change = 0;
        Some(self.auto_class)
    }
}

// ---------------------------------------------------------------------------
// The node's state

/// The operator's level and the automatic controller.
#[derive(Debug)]
struct Levels2 {
    operator_class: u32,
    operator_percent: u64,
    /// Who set the operator level last, and when (ms since the epoch); None at start.
    operator_set: Option<(String, i64)>,
    controller: Controller,
}

#[derive(Default)]
struct ClassCounters {
    inflight: AtomicUsize,
    admitted: AtomicU64,
    shed: [AtomicU64; 4],
}

/// This node's admission control: the policy, the levels, the counters.
pub struct Admission {
    pub policy: Policy,
    settings: AdmissionSettings,
    levels: Mutex<Levels2>,
    inflight: AtomicUsize,
    counters: Vec<ClassCounters>,
    started: Instant,
}

/// The authentication admission control did, handed to the FHIR handler so a
/// request is authenticated once.
#[derive(Clone)]
pub struct Authenticated(pub Result<Principal, FhirError>);

/// An admitted request: counted in flight until dropped.
pub struct Ticket<'a> {
    adm: &'a Admission,
    class: u32,
    start: Instant,
}

impl Ticket<'_> {
    pub fn class(&self) -> u32 {
        self.class
    }
    /// The request was served: its latency feeds the automatic level.
    pub fn served(self) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let mut l = self.adm.levels.lock().unwrap_or_else(|e| e.into_inner());
        l.controller.record(ms);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.adm.inflight.fetch_sub(1, Ordering::AcqRel);
        self.adm.counters[(self.class - 1) as usize]
            .inflight
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// A shed request: its class and why.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub class: u32,
    pub why: Shed,
}

impl Admission {
    pub fn new(s: &AdmissionSettings, inflight_max: usize) -> Result<Admission, String> {
        let policy = Policy::new(s, inflight_max)?;
        let n = policy.class_count();
        let operator_class = match &s.start_class {
            Some(name) => policy
                .classes
                .iter()
                .position(|c| c.name == name.trim())
                .map(|i| i as u32 + 1)
                .ok_or_else(|| {
                    format!("[admission] start_class names class '{name}', which is not one of [[admission.classes]]")
                })?,
            None => n,
        };
        if !(1..=100).contains(&s.start_percent) {
            return Err(format!(
                "[admission] start_percent must be 1-100, not {}",
                s.start_percent
            ));
        }
        Ok(Admission {
            counters: (0..n).map(|_| ClassCounters::default()).collect(),
            levels: Mutex::new(Levels2 {
                operator_class,
                operator_percent: s.start_percent,
                operator_set: None,
                controller: Controller::new(n, s),
            }),
            settings: s.clone(),
            policy,
            inflight: AtomicUsize::new(0),
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Levels2> {
        self.levels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The levels now (after moving the automatic one if it is time).
    pub fn levels(&self) -> Levels {
        let inflight = self.inflight.load(Ordering::Acquire);
        let mut l = self.lock();
        if let Some(k) = l.controller.tick(self.now_ms(), inflight) {
            tracing::info!(auto_class = k, ewma_ms = ?l.controller.ewma_ms(), "admission: the automatic level moved");
        }
        Levels {
            operator_class: l.operator_class,
            operator_percent: l.operator_percent,
            auto_class: l.controller.auto_class(),
        }
    }

    /// Admit a request of `class` from `user`, or say why not.
    pub fn try_admit(&self, class: u32, user: &str) -> Result<Ticket<'_>, Refusal> {
        let class = class.clamp(1, self.policy.class_count());
        let levels = self.levels();
        let c = &self.counters[(class - 1) as usize];
        // Counted first, so two requests cannot both take the last place.
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        match self.policy.decide(class, user_bucket(user), before, levels) {
            Ok(()) => {
                c.inflight.fetch_add(1, Ordering::AcqRel);
                c.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(Ticket {
                    adm: self,
                    class,
                    start: Instant::now(),
                })
            }
            Err(why) => {
                self.inflight.fetch_sub(1, Ordering::AcqRel);
                c.shed[why.index()].fetch_add(1, Ordering::Relaxed);
                Err(Refusal { class, why })
            }
        }
    }

    /// The 503 of a shed request.
    pub fn refusal_response(&self, r: Refusal) -> Response {
        let retry = match r.why {
            Shed::Closed { .. } | Shed::Percent { .. } => self.settings.closed_retry_after_s,
            _ => self.settings.retry_after_s,
        };
        let ewma = self.lock().controller.ewma_ms().unwrap_or(0.0);
        let msg = self
            .policy
            .explain(r.class, r.why, retry, (ewma, self.settings.latency_target_ms));
        let mut resp = FhirError::unavailable(msg).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
        resp.headers_mut()
            .insert("x-hale-admission-class", HeaderValue::from(r.class));
        resp
    }

    /// Set the operator's level: classes `1..=class`, and `percent`% of `class`'s users.
    pub fn set_operator(&self, class: u32, percent: u64, by: &str, at_ms: i64) -> Result<(), String> {
        let n = self.policy.class_count();
        if !(1..=n).contains(&class) {
            return Err(format!(
                "class {class} does not exist on this node; classes are 1-{n} (see GET /ops/admit)"
            ));
        }
        if !(1..=100).contains(&percent) {
            return Err(format!(
                "percent must be 1-100, not {percent} (to close a class, admit one class fewer)"
            ));
        }
        let mut l = self.lock();
        l.operator_class = class;
        l.operator_percent = percent;
        l.operator_set = Some((by.to_string(), at_ms));
        Ok(())
    }

    /// The `admission` section of `/ops/status`, and the answer of `/ops/admit`.
    pub fn status(&self) -> Value {
        let levels = self.levels();
        let l = self.lock();
        let classes: Vec<Value> = self
            .policy
            .classes
            .iter()
            .zip(&self.counters)
            .enumerate()
            .map(|(i, (c, n))| {
                let k = i as u32 + 1;
                let shed: serde_json::Map<String, Value> = REASONS
                    .iter()
                    .zip(&n.shed)
                    .map(|(r, v)| (r.to_string(), json!(v.load(Ordering::Relaxed))))
                    .collect();
                let state = if k > levels.operator_class || k > levels.auto_class {
                    "closed"
                } else if k == levels.operator_class && levels.operator_percent < 100 {
                    "partial"
                } else {
                    "open"
                };
                json!({
                    "class": k,
                    "name": c.name,
                    "state": state,
                    "inflightPercent": c.inflight_percent,
                    "inflightCeiling": c.ceiling,
                    "inflight": n.inflight.load(Ordering::Relaxed),
                    "admitted": n.admitted.load(Ordering::Relaxed),
                    "shed": shed,
                })
            })
            .collect();
        json!({
            "inflight": self.inflight.load(Ordering::Relaxed),
            "inflightMax": self.policy.inflight_max,
            "operator": {
                "class": levels.operator_class,
                "percent": levels.operator_percent,
                "setBy": l.operator_set.as_ref().map(|s| s.0.clone()),
                "setAt": l.operator_set.as_ref().map(|s| crate::wire::instant(s.1)),
            },
            "automatic": {
                "class": levels.auto_class,
                "latencyTargetMs": self.settings.latency_target_ms,
                "latencyEwmaMs": l.controller.ewma_ms(),
            },
            "admittedClass": levels.operator_class.min(levels.auto_class),
            "classes": classes,
        })
    }

    /// Prometheus gauges.
    pub fn gauges(&self) -> Vec<(String, &'static str, f64)> {
        let levels = self.levels();
        let ewma = self.lock().controller.ewma_ms();
        let mut g = vec![
            (
                "hale_admission_operator_class".to_string(),
                "Admission: the operator admits classes up to this one (hale admit).",
                levels.operator_class as f64,
            ),
            (
                "hale_admission_operator_percent".to_string(),
                "Admission: percent of the operator's own class's users admitted.",
                levels.operator_percent as f64,
            ),
            (
                "hale_admission_automatic_class".to_string(),
                "Admission: the latency signal admits classes up to this one.",
                levels.auto_class as f64,
            ),
            (
                "hale_admission_latency_ewma_ms".to_string(),
                "Admission: moving average of served FHIR request latency.",
                ewma.unwrap_or(0.0),
            ),
        ];
        let label = |k: usize| format!("class=\"{}\",name=\"{}\"", k + 1, self.policy.classes[k].name);
        for (k, c) in self.counters.iter().enumerate() {
            g.push((
                format!("hale_admission_inflight_requests{{{}}}", label(k)),
                "Admission: FHIR requests being served, by class.",
                c.inflight.load(Ordering::Relaxed) as f64,
            ));
        }
        for (k, c) in self.counters.iter().enumerate() {
            g.push((
                format!("hale_admission_admitted_requests{{{}}}", label(k)),
                "Admission: FHIR requests admitted since start, by class (a counter).",
                c.admitted.load(Ordering::Relaxed) as f64,
            ));
        }
        for (k, c) in self.counters.iter().enumerate() {
            for (r, v) in REASONS.iter().zip(&c.shed) {
                g.push((
                    format!("hale_admission_shed_requests{{{},reason=\"{r}\"}}", label(k)),
                    "Admission: FHIR requests answered 503 since start, by class and reason (a counter).",
                    v.load(Ordering::Relaxed) as f64,
                ));
            }
        }
        g
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// Classify and admit one FHIR request (the `fhir` handler calls this
/// first). An admitted request carries its authentication on in `req`'s
/// extensions, so the handler does not authenticate it again.
pub async fn admit<'a>(app: &'a App, req: &mut axum::extract::Request) -> Result<Option<Ticket<'a>>, Response> {
    let path = req.uri().path();
    if exempt(path) {
        return Ok(None);
    }
    let adm = &app.admission;
    let auth = if adm.policy.needs_principal() {
        Some(app.auth.authenticate(req.headers()).await)
    } else {
        None
    };
    let who = match &auth {
        Some(Ok(p)) => Who::of(p),
        _ => Who::default(),
    };
    let class = adm.policy.classify(&who, req.uri().path());
    let ticket = adm.try_admit(class, who.client.unwrap_or(""));
    match ticket {
        Ok(t) => {
            if let Some(a) = auth {
                req.extensions_mut().insert(Authenticated(a));
            }
            Ok(Some(t))
        }
        Err(r) => {
            tracing::debug!(
                class = r.class,
                reason = r.why.reason(),
                path = req.uri().path(),
                "admission: shed"
            );
            Err(adm.refusal_response(r))
        }
    }
}

/// `/ops/admit`: `GET` the levels; `POST {"class": N, "percent": P}` sets the operator's.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/ops/admit", get(get_levels).post(set_levels))
}

async fn get_levels(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    Json(app.admission.status()).into_response()
}

/// The body of `POST /ops/admit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmitRequest {
    /// Admit classes 1..=class (default: the current operator class).
    pub class: Option<u32>,
    /// Of that class, this percent of users (default 100 when `class` is given,
    /// else the current percent).
    pub percent: Option<u64>,
}

async fn set_levels(State(app): State<Arc<App>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let bad = |msg: String| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, msg).into_response();
    let req: AdmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "the body must be JSON {{\"class\": N, \"percent\": P}} (either or both): {e}"
            ))
        }
    };
    let now = app.admission.levels();
    let (class, percent) = match (req.class, req.percent) {
        (None, None) => return bad("give class, percent or both".into()),
        (Some(c), p) => (c, p.unwrap_or(100)),
        (None, Some(p)) => (now.operator_class, p),
    };
    let by = match app.auth.authenticate(&headers).await {
        Ok(p) => p.user,
        Err(_) => "unknown".into(),
    };
    if let Err(e) = app.admission.set_operator(class, percent, &by, crate::now_ms()) {
        return bad(e);
    }
    tracing::info!(class, percent, by, "admission: operator level set");
    Json(app.admission.status()).into_response()
}

/// The `admission` section of `GET /ops/status`.
pub fn status_section(app: &App) -> Value {
    app.admission.status()
}

/// The admission gauges of `/metrics`.
pub fn gauges(app: &App) -> Vec<(String, &'static str, f64)> {
    app.admission.gauges()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(v: Value) -> AdmissionSettings {
        serde_json::from_value(v).expect("admission settings parse")
    }

    fn hospital_settings() -> AdmissionSettings {
        settings(json!({
            "latency_target_ms": 500,
            "default_class": "back-office",
            "classes": [
                {"name": "emergency"}, {"name": "wards"}, {"name": "outpatients"}, {"name": "back-office"}
            ],
            "rules": [
                {"class": "back-office", "routes": ["/$export", "/Patient/$export"]},
                {"class": "emergency", "sites": ["ED", "MAT"]},
                {"class": "wards", "roles": ["clinician"]},
                {"class": "outpatients", "roles": ["clerk"], "routes": ["/Appointment", "/Slot"]},
                {"class": "emergency", "clients": ["ambulance-gateway"]}
            ]
        }))
    }

    fn hospital() -> Policy {
        Policy::new(&hospital_settings(), 64).expect("policy")
    }

    fn who<'a>(role: Option<Role>, site: Option<&'a str>, client: Option<&'a str>) -> Who<'a> {
        Who { role, site, client }
    }

    #[test]
    fn classify_first_matching_rule() {
        let p = hospital();
        let clin = Some(Role::Clinician);
        let clerk = Some(Role::Clerk);
        #[allow(clippy::type_complexity)]
        let cases: &[(Who, &str, u32)] = &[
            // Site rule: an ED clinician is class 1.
            (who(clin, Some("ED"), Some("dr.a")), "/Patient/1", 1),
            (who(clerk, Some("MAT"), Some("c.b")), "/Appointment", 1),
            // Bulk export is back-office whoever asks (its rule comes first).
            (who(clin, Some("ED"), Some("dr.a")), "/$export", 4),
            (who(clin, None, Some("dr.a")), "/$export-status/9", 4),
            (who(clin, None, Some("dr.a")), "/Patient/$export", 4),
            // Role rule.
            (who(clin, Some("QEH"), Some("dr.a")), "/Observation", 2),
            // Role AND route: a clerk on appointments is an outpatient clinic...
            (who(clerk, None, Some("c.b")), "/Appointment?date=2025", 3),
            (who(clerk, None, Some("c.b")), "/Slot", 3),
            // ...and elsewhere falls to the default.
            (who(clerk, None, Some("c.b")), "/Patient", 4),
            // Client rule.
            (
                who(Some(Role::Service), None, Some("ambulance-gateway")),
                "/Encounter",
                1,
            ),
            // Unauthenticated: only route rules can match.
            (Who::default(), "/Observation", 4),
            (who(Some(Role::Admin), None, Some("admin.ada")), "/Patient", 4),
        ];
        for (w, path, want) in cases {
            assert_eq!(p.classify(w, path), *want, "{w:?} {path}");
        }
        assert!(p.needs_principal());
    }

    #[test]
    fn default_shares_give_lower_classes_lower_ceilings() {
        let p = hospital();
        let ceilings: Vec<usize> = (1..=4).map(|k| p.ceiling(k)).collect();
        assert_eq!(ceilings, vec![64, 48, 32, 16]);
        // A tiny budget still lets every class run one request.
        let p = Policy::new(&hospital_settings(), 2).unwrap();
        let ceilings: Vec<usize> = (1..=4).map(|k| p.ceiling(k)).collect();
        assert_eq!(ceilings, vec![2, 2, 1, 1]);
    }

    #[test]
    fn decide_by_levels_and_inflight() {
        let p = hospital();
        let all = Levels {
            operator_class: 4,
            operator_percent: 100,
            auto_class: 4,
        };
        // (class, bucket, inflight, levels, expected)
        type Case = (u32, u64, usize, Levels, Result<(), Shed>);
        let cases: &[Case] = &[
            (4, 0, 0, all, Ok(())),
            (4, 99, 15, all, Ok(())),
            (
                4,
                0,
                16,
                all,
                Err(Shed::Inflight {
                    inflight: 16,
                    ceiling: 16,
                }),
            ),
            (3, 0, 16, all, Ok(())),
            (
                3,
                0,
                32,
                all,
                Err(Shed::Inflight {
                    inflight: 32,
                    ceiling: 32,
                }),
            ),
            (1, 0, 63, all, Ok(())),
            (
                1,
                0,
                64,
                all,
                Err(Shed::Inflight {
                    inflight: 64,
                    ceiling: 64,
                }),
            ),
            // Operator at class 2: 3 and 4 closed whatever the load.
            (
                3,
                0,
                0,
                Levels {
                    operator_class: 2,
                    ..all
                },
                Err(Shed::Closed { operator_class: 2 }),
            ),
            (
                2,
                0,
                0,
                Levels {
                    operator_class: 2,
                    ..all
                },
                Ok(()),
            ),
            // Operator at class 2, 30%: buckets 0-29 in, 30-99 out; class 1 unaffected.
            (
                2,
                29,
                0,
                Levels {
                    operator_class: 2,
                    operator_percent: 30,
                    ..all
                },
                Ok(()),
            ),
            (
                2,
                30,
                0,
                Levels {
                    operator_class: 2,
                    operator_percent: 30,
                    ..all
                },
                Err(Shed::Percent { percent: 30 }),
            ),
            (
                1,
                99,
                0,
                Levels {
                    operator_class: 2,
                    operator_percent: 30,
                    ..all
                },
                Ok(()),
            ),
            // The latency signal at class 3.
            (
                4,
                0,
                0,
                Levels { auto_class: 3, ..all },
                Err(Shed::Latency { auto_class: 3 }),
            ),
            (3, 0, 0, Levels { auto_class: 3, ..all }, Ok(())),
            // Both: the operator's reason is given first.
            (
                4,
                0,
                0,
                Levels {
                    operator_class: 2,
                    operator_percent: 100,
                    auto_class: 1,
                },
                Err(Shed::Closed { operator_class: 2 }),
            ),
            // The operator's percent does not apply to a class the latency signal closed.
            (
                2,
                0,
                0,
                Levels {
                    operator_class: 2,
                    operator_percent: 50,
                    auto_class: 1,
                },
                Err(Shed::Latency { auto_class: 1 }),
            ),
        ];
        for (class, bucket, inflight, levels, want) in cases {
            assert_eq!(
                p.decide(*class, *bucket, *inflight, *levels),
                *want,
                "class {class} bucket {bucket} inflight {inflight} {levels:?}"
            );
        }
    }

    #[test]
    fn user_buckets_are_stable_and_spread() {
        assert_eq!(user_bucket("clerk.kent"), user_bucket("clerk.kent"));
        let buckets: std::collections::BTreeSet<u64> = (0..1000).map(|i| user_bucket(&format!("user{i}"))).collect();
        assert!(buckets.len() > 90, "{} distinct buckets of 100", buckets.len());
        // Raising the percent only ever adds users: in at P stays in at P' > P.
        for i in 0..200 {
            let b = user_bucket(&format!("user{i}"));
            for p in 1..=100u64 {
                if b < p {
                    assert!((p..=100).all(|q| b < q));
                }
            }
        }
    }

    #[test]
    fn exempt_paths() {
        for (path, want) in [
            ("/ops/status", true),
            ("/ops/admit", true),
            ("/ops", true),
            ("/cluster/status", true),
            ("/healthz", true),
            ("/readyz", true),
            ("/metrics", true),
            ("/Patient", false),
            ("/$export", false),
            ("/operations", false),
        ] {
            assert_eq!(exempt(path), want, "{path}");
        }
    }

    #[test]
    fn no_classes_is_one_class_with_the_whole_budget() {
        let p = Policy::new(&AdmissionSettings::default(), 4).unwrap();
        assert_eq!(p.class_count(), 1);
        assert_eq!(p.classify(&Who::default(), "/Patient"), 1);
        assert_eq!(p.ceiling(1), 4);
        assert!(!p.needs_principal());
        let why = p.decide(
            1,
            0,
            4,
            Levels {
                operator_class: 1,
                operator_percent: 100,
                auto_class: 1,
            },
        );
        assert_eq!(
            why,
            Err(Shed::Inflight {
                inflight: 4,
                ceiling: 4
            })
        );
        let msg = p.explain(1, why.unwrap_err(), 1, (0.0, 0));
        assert!(msg.contains("its limit of 4 requests"), "{msg}");
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_fix() {
        let cases = [
            (
                json!({"rules": [{"class": "x", "roles": ["clerk"]}]}),
                "lists no [[admission.classes]]",
            ),
            (
                json!({"classes": [{"name": "a"}], "rules": [{"class": "b", "roles": ["clerk"]}]}),
                "names class 'b'",
            ),
            (
                json!({"classes": [{"name": "a"}], "rules": [{"class": "a"}]}),
                "has no condition",
            ),
            (json!({"classes": [{"name": "a"}, {"name": "a"}]}), "twice"),
            (
                json!({"classes": [{"name": "a", "inflight_percent": 50}, {"name": "b", "inflight_percent": 80}]}),
                "give lower classes smaller shares",
            ),
            (
                json!({"classes": [{"name": "a"}], "rules": [{"class": "a", "routes": ["Patient"]}]}),
                "starting with '/'",
            ),
            (
                json!({"default_class": "z", "classes": [{"name": "a"}]}),
                "default_class names class 'z'",
            ),
        ];
        for (v, want) in cases {
            let err = Policy::new(&settings(v.clone()), 8).expect_err(&v.to_string());
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        assert!(serde_json::from_value::<AdmissionSettings>(json!({"unknown": 1})).is_err());
        let s = settings(json!({"start_class": "b", "classes": [{"name": "a"}]}));
        assert!(Admission::new(&s, 8).is_err());
    }

    #[test]
    fn explanations_name_the_class_the_reason_and_the_retry() {
        let p = hospital();
        for (class, why, want) in [
            (
                4,
                Shed::Closed { operator_class: 2 },
                "class 4 (back-office) is not being served on this node yet: an operator admits classes 1-2 only",
            ),
            (3, Shed::Closed { operator_class: 1 }, "admits class 1 (emergency) only"),
            (2, Shed::Percent { percent: 25 }, "25% of its users are admitted"),
            (
                4,
                Shed::Latency { auto_class: 3 },
                "(812 ms, moving average) is above the target of 500 ms",
            ),
            (
                4,
                Shed::Inflight {
                    inflight: 16,
                    ceiling: 16,
                },
                "16 requests in flight, and this class may start one only while fewer than 16 of its 64 places are taken",
            ),
        ] {
            let msg = p.explain(class, why, 7, (812.0, 500));
            assert!(msg.contains(want), "{msg}");
            assert!(msg.ends_with("retry in 7 s"), "{msg}");
        }
    }

    /// The latency controller, driven by (time ms, latency samples, in flight) steps.
    #[test]
    fn controller_closes_fast_and_reopens_slowly() {
        let s = AdmissionSettings {
            latency_target_ms: 100,
            latency_reopen_percent: 50,
            close_step_ms: 1_000,
            reopen_step_ms: 5_000,
            ..AdmissionSettings::default()
        };
        let mut c = Controller::new(4, &s);
        // (now_ms, samples recorded before the tick, inflight, auto_class after)
        let steps: &[(u64, &[f64], usize, u32)] = &[
            (0, &[20.0, 30.0], 3, 4),     // healthy
            (1_000, &[400.0; 20], 10, 3), // slow: close one class
            (1_500, &[400.0], 10, 3),     // within close_step: hold
            (2_000, &[400.0], 10, 2),     // still slow: close another
            (3_000, &[300.0], 10, 1),     // and another
            (4_000, &[300.0], 10, 1),     // never below class 1
            (5_000, &[30.0; 40], 2, 1),   // recovered, but reopen waits reopen_step_ms
            (8_000, &[30.0], 2, 2),       // 5 s after the last change: reopen one
            (9_000, &[30.0], 2, 2),       // and wait again
            (13_000, &[30.0], 2, 3),
            (14_000, &[80.0; 40], 2, 3), // between reopen and target: hold
            (18_000, &[80.0], 2, 3),
            (19_000, &[150.0; 40], 5, 2), // over again
            (23_000, &[], 0, 2),          // nothing measured, nothing to protect: ...
            (24_000, &[], 0, 3),          // ... reopen reopen_step_ms after the last change
            (28_000, &[], 0, 3),
            (29_000, &[], 0, 4),
        ];
        for (now, samples, inflight, want) in steps {
            for ms in *samples {
                c.record(*ms);
            }
            c.tick(*now, *inflight);
            assert_eq!(c.auto_class(), *want, "at {now} ms (ewma {:?})", c.ewma_ms());
        }
        // Off when no target is set.
        let mut off = Controller::new(4, &AdmissionSettings::default());
        off.record(10_000.0);
        assert_eq!(off.tick(100_000, 50), None);
        assert_eq!(off.auto_class(), 4);
    }

    #[test]
    fn admission_counts_in_flight_and_sheds_exactly_at_the_ceiling() {
        let s = hospital_settings();
        let a = Admission::new(&s, 8).unwrap();
        // Ceilings 8, 6, 4, 2.
        let t1 = a.try_admit(4, "c").expect("first");
        let t2 = a.try_admit(4, "c").expect("second");
        let r = a.try_admit(4, "c").err().expect("third class-4 request is shed");
        assert_eq!(
            r.why,
            Shed::Inflight {
                inflight: 2,
                ceiling: 2
            }
        );
        let t3 = a.try_admit(1, "d").expect("class 1 still admitted");
        drop(t1);
        // Every class's requests count against each ceiling: 2 in flight.
        let r = a.try_admit(4, "c").err().expect("class 4 still at its ceiling");
        assert_eq!(
            r.why,
            Shed::Inflight {
                inflight: 2,
                ceiling: 2
            }
        );
        let t4 = a.try_admit(3, "c").expect("class 3's ceiling is 4");
        drop((t2, t3, t4));
        let t5 = a.try_admit(4, "c").expect("places freed");
        drop(t5);
        let st = a.status();
        assert_eq!(st["inflight"], 0);
        assert_eq!(st["classes"][3]["admitted"], 3);
        assert_eq!(st["classes"][3]["shed"]["inflight"], 2);
        assert_eq!(st["classes"][2]["admitted"], 1);
        // The operator closes classes 3-4.
        a.set_operator(2, 100, "ops", 0).unwrap();
        let r = a.try_admit(3, "c").err().expect("closed");
        assert_eq!(r.why, Shed::Closed { operator_class: 2 });
        let resp = a.refusal_response(r);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "60");
        assert!(a.set_operator(5, 100, "ops", 0).is_err());
        assert!(a.set_operator(2, 0, "ops", 0).is_err());
        assert_eq!(a.status()["classes"][2]["state"], "closed");
    }
}
