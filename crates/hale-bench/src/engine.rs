//! The load loop: N connection tasks, each sending one request at a time
//! until the deadline (or the request cap, or the job runs dry), each with its
//! own tally and histogram, merged at the end. Plus a bounded parallel
//! "create these resources" helper for untimed setup.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tokio::task::JoinSet;

use crate::client::{created_id, failure_error, status_error, Client, Failure, Response, Target};
use crate::data::Rng;
use crate::error::BenchError;
use crate::hist::Histogram;

/// One request a job wants sent. `tag` lets the job recognise it in `classify`
/// (e.g. the slot index, or the seeded patient searched for).
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) body: Option<Bytes>,
    pub(crate) tag: usize,
}

/// How a response counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The workload's success (201 created/booked, 200 found).
    Ok,
    /// An expected refusal (409 slot already taken).
    Conflict,
    /// 200 but the expected resource was not in it.
    Miss,
    /// Anything else; counted by status.
    Error,
}

/// What a workload does per request. Shared by all its connections.
pub(crate) trait Job: Send + Sync + 'static {
    /// The next request, or None when the job has nothing left to do.
    fn next(&self, rng: &mut Rng) -> Option<Req>;
    /// How the response to `req` counts. Called for warm-up requests too (so
    /// jobs can keep whole-run state such as bookings per slot).
    fn classify(&self, req: &Req, resp: &Response) -> Class;
    /// The next request on connection `conn` (0-based), whose `turn`-th call
    /// this is (0, 1, 2, …; warm-up included). The engine calls this; the
    /// default ignores both and calls `next`. Jobs that cycle through a fixed
    /// list per connection override it.
    fn next_on(&self, conn: usize, turn: u64, rng: &mut Rng) -> Option<Req> {
        let _ = (conn, turn);
        self.next(rng)
    }
    /// Called once for every request counted in the timed phase, after
    /// `classify`: `response` is the class and latency, or None when no
    /// response came (timeout, broken connection, no connection). For jobs
    /// that keep their own breakdown (e.g. per search kind); default: nothing.
    fn observe(&self, req: &Req, response: Option<(Class, Duration)>) {
        let _ = (req, response);
    }
}

/// Timing and size of one load phase.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) connections: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Cap on requests started in the timed phase (all connections together).
    pub(crate) requests_max: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) seed: u64,
}

/// Counts for the timed phase.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) conflicts: u64,
    pub(crate) misses: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) hist: Histogram,
    pub(crate) reconnects: u64,
    /// When the last counted request finished.
    pub(crate) last_done: Option<Instant>,
}

impl Tally {
    fn error(&mut self, key: &str) {
        *self.errors.entry(key.to_string()).or_insert(0) += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.conflicts += o.conflicts;
        self.misses += o.misses;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.hist.merge(&o.hist);
        self.reconnects += o.reconnects;
        self.last_done = self.last_done.max(o.last_done);
    }
}

/// The merged result of a load phase.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) tally: Tally,
    /// Seconds from the start of the timed phase to the last counted response.
    pub(crate) elapsed_s: f64,
    /// The timed-phase request cap stopped the run.
    pub(crate) capped: bool,
    /// The job ran out of work (`next` returned None).
    pub(crate) ran_dry: bool,
    /// Seconds after the start of the timed phase when the job ran dry
    /// (negative: during warm-up).
    pub(crate) ran_dry_at_s: Option<f64>,
}

/// Open `plan.connections` connections, then run `job` on all of them: an
/// untimed warm-up, then the timed phase. Fails only if the connections
/// cannot be opened at the start.
pub(crate) async fn drive<J: Job>(target: Arc<Target>, job: Arc<J>, plan: &Plan) -> Result<Outcome, BenchError> {
    // Connect everyone first so connection setup is not timed.
    let mut clients = Vec::with_capacity(plan.connections);
    let mut opening = JoinSet::new();
    for _ in 0..plan.connections {
        let target = target.clone();
        let timeout = plan.timeout;
        opening.spawn(async move {
            let mut c = Client::new(target);
            c.connect(timeout).await.map(|()| c)
        });
    }
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(f)) => return Err(failure_error(&target, "opening connections", f, plan.timeout)),
            Err(e) => return Err(join_error("opening connections", e)),
        }
    }

    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let deadline = measure_from + plan.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let capped = Arc::new(AtomicBool::new(false));
    let ran_dry = Arc::new(std::sync::Mutex::new(None::<Instant>));

    let mut tasks = JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let job = job.clone();
        let issued = issued.clone();
        let capped = capped.clone();
        let ran_dry = ran_dry.clone();
        let requests_max = plan.requests_max;
        let timeout = plan.timeout;
        let mut rng = Rng::new(plan.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut turn = 0u64;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let measured = now >= measure_from;
                if measured {
                    if let Some(max) = requests_max {
                        if issued.fetch_add(1, Ordering::Relaxed) >= max {
                            capped.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                let next = job.next_on(i, turn, &mut rng);
                turn += 1;
                let Some(req) = next else {
                    let mut at = ran_dry.lock().unwrap_or_else(|p| p.into_inner());
                    at.get_or_insert(now);
                    break;
                };
                let t0 = Instant::now();
                let result = client
                    .send(req.method.clone(), &req.path, req.body.clone(), timeout)
                    .await;
                let done = Instant::now();
                // Classify every response, warm-up included (jobs keep whole-run state).
                let result = result.map(|resp| (resp.status, job.classify(&req, &resp)));
                if !measured {
                    if let Err(Failure::Connect(_)) = result {
                        pause_before_retry(deadline).await;
                    }
                    continue;
                }
                tally.requests += 1;
                tally.last_done = Some(done);
                job.observe(&req, result.as_ref().ok().map(|&(_, class)| (class, done - t0)));
                match result {
                    Ok((status, class)) => {
                        tally.hist.record(done - t0);
                        match class {
                            Class::Ok => tally.ok += 1,
                            Class::Conflict => tally.conflicts += 1,
                            Class::Miss => tally.misses += 1,
                            Class::Error => tally.error(&status.to_string()),
                        }
                    }
                    Err(Failure::Timeout) => tally.error("timeout"),
                    Err(Failure::Transport(_)) => tally.error("transport"),
                    Err(Failure::Connect(_)) => {
                        tally.error("connect");
                        pause_before_retry(deadline).await;
                    }
                }
            }
            tally.reconnects = client.reconnects;
            tally
        });
    }

    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(t) => tally.merge(t),
            Err(e) => return Err(join_error("running the load", e)),
        }
    }
    let elapsed_s = tally
        .last_done
        .map(|t| t.saturating_duration_since(measure_from).as_secs_f64())
        .unwrap_or(0.0);
    let ran_dry_at = *ran_dry.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Outcome {
        tally,
        elapsed_s,
        capped: capped.load(Ordering::Relaxed),
        ran_dry: ran_dry_at.is_some(),
        ran_dry_at_s: ran_dry_at.map(|t| {
            if t >= measure_from {
                (t - measure_from).as_secs_f64()
            } else {
                -(measure_from - t).as_secs_f64()
            }
        }),
    })
}

/// After a failed connect, wait a little (not past the deadline) so a dead
/// server does not turn the loop into a busy spin.
async fn pause_before_retry(deadline: Instant) {
    let until = (Instant::now() + Duration::from_millis(50)).min(deadline);
    tokio::time::sleep_until(until.into()).await;
}

fn join_error(what: &str, e: tokio::task::JoinError) -> BenchError {
    BenchError::Internal {
        what: what.to_string(),
        message: format!("a connection task failed: {e}"),
    }
}

/// How many times a setup create is retried with a fresh body after a 409 or
/// 422 (e.g. an NHS number already taken by an earlier run or by the demo
/// board, which can hold 100,000 of the million test-range numbers).
const SETUP_ATTEMPTS: usize = 20;

/// Create `n` resources of `resource_type` (untimed) over `connections`
/// connections. `make(i, rng)` builds the body for item `i` plus whatever the
/// caller wants back alongside the new id. Results are in item order.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_many<T, F>(
    target: Arc<Target>,
    what: &str,
    resource_type: &'static str,
    n: usize,
    connections: usize,
    timeout: Duration,
    seed: u64,
    make: F,
) -> Result<Vec<(String, T)>, BenchError>
where
    T: Send + 'static,
    F: Fn(usize, &mut Rng) -> Result<(Bytes, T), BenchError> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let path = Arc::new(target.path(&format!("/{resource_type}")));
    let what = Arc::new(what.to_string());
    let mut tasks = JoinSet::new();
    for w in 0..connections.clamp(1, n.max(1)) {
        let (target, make, next, failed, path, what) = (
            target.clone(),
            make.clone(),
            next.clone(),
            failed.clone(),
            path.clone(),
            what.clone(),
        );
        let mut rng = Rng::new(seed ^ 0x5EED ^ (w as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        tasks.spawn(async move {
            let mut client = Client::new(target.clone());
            // Connect before taking work, so the setup opens exactly
            // `connections` connections however the work is shared out.
            client
                .connect(timeout)
                .await
                .map_err(|f| failure_error(&target, &format!("{what}: connecting"), f, timeout))?;
            let mut made = Vec::new();
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(made);
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(made);
                }
                let result = async {
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let (body, extra) = make(i, &mut rng)?;
                        let resp = client
                            .send(Method::POST, &path, Some(body), timeout)
                            .await
                            .map_err(|f| failure_error(&target, &format!("{what}: POST {path}"), f, timeout))?;
                        if resp.status == 201 || resp.status == 200 {
                            let id = created_id(resource_type, &resp).ok_or_else(|| BenchError::UnexpectedStatus {
                                what: format!("{what}: POST {path} gave no id in the body or Location header"),
                                status: resp.status,
                                body: crate::client::snippet(&resp.body),
                            })?;
                            return Ok((id, extra));
                        }
                        if (resp.status == 409 || resp.status == 422) && attempt < SETUP_ATTEMPTS {
                            continue;
                        }
                        return Err(status_error(&target, &format!("{what}: POST {path}"), &resp));
                    }
                }
                .await;
                match result {
                    Ok((id, extra)) => made.push((i, id, extra)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(made)) => all.extend(made),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(join_error(&what, e));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    all.sort_by_key(|(i, _, _)| *i);
    Ok(all.into_iter().map(|(_, id, extra)| (id, extra)).collect())
}
