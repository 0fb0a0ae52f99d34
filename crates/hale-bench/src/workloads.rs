//! The single workloads: their jobs, their setup, and their reports
//! (search-mix's job and discovery live in `mix`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use crate::client::{created_id, failure_error, status_error, Client, Response, Target};
use crate::data::{self, Rng, GIVEN_FEMALE, GIVEN_MALE, SURNAMES};
use crate::engine::{self, Class, Job, Outcome, Plan, Req};
use crate::error::BenchError;
use crate::mix::{self, Ids, MixData, MixJob, MixKind};
use crate::nhs::NhsGen;
use crate::report::{BookingFigures, Latency, WorkloadReport};
use crate::BenchOpts;

/// A patient created for Read / Search / Book.
#[derive(Debug, Clone)]
pub(crate) struct Seeded {
    pub(crate) id: String,
    pub(crate) nhs: String,
    pub(crate) family: &'static str,
}

/// State shared by the workloads of one `run` (so `All` seeds once and never
/// reuses an NHS number).
pub(crate) struct Ctx {
    pub(crate) target: Arc<Target>,
    pub(crate) opts: BenchOpts,
    pub(crate) nhs: Arc<NhsGen>,
    pub(crate) seed: u64,
    pub(crate) seeded: Option<Arc<Vec<Seeded>>>,
}

impl Ctx {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.opts.request_timeout_s)
    }

    fn plan(&self, salt: u64) -> Plan {
        Plan {
            connections: self.opts.connections,
            warmup: Duration::from_secs(self.opts.warmup_s),
            duration: Duration::from_secs(self.opts.duration_s),
            requests_max: self.opts.requests_max,
            timeout: self.timeout(),
            seed: self.seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407),
        }
    }

    /// Check the server is there, speaks FHIR, and accepts our credentials.
    pub(crate) async fn preflight(&self) -> Result<(), BenchError> {
        let timeout = self.timeout();
        let mut client = Client::new(self.target.clone());
        let what = "checking the server (GET /metadata)";
        client
            .connect(timeout)
            .await
            .map_err(|f| failure_error(&self.target, what, f, timeout))?;
        let resp = client
            .send(Method::GET, &self.target.path("/metadata"), None, timeout)
            .await
            .map_err(|f| failure_error(&self.target, what, f, timeout))?;
        match resp.status {
            200..=299 => Ok(()),
            401 | 403 => Err(status_error(&self.target, what, &resp)),
            status => Err(BenchError::NotFhir {
                url: self.target.base_url.clone(),
                status,
            }),
        }
    }

    /// Create `seed_patients` patients once per run (untimed).
    pub(crate) async fn seeded(&mut self) -> Result<Arc<Vec<Seeded>>, BenchError> {
        if let Some(s) = &self.seeded {
            return Ok(s.clone());
        }
        let nhs = self.nhs.clone();
        let made = engine::create_many(
            self.target.clone(),
            &format!("seeding {} patients", self.opts.seed_patients),
            "Patient",
            self.opts.seed_patients,
            self.opts.setup_connections,
            self.timeout(),
            self.seed ^ 0x5EED_0001,
            move |_, rng| {
                let number = nhs.next().ok_or_else(|| BenchError::NhsNumbersExhausted {
                    what: "seeding patients".to_string(),
                })?;
                let family = *rng.pick(&SURNAMES);
                let body = data::patient_body(rng, &number, family);
                Ok((body, (number, family)))
            },
        )
        .await?;
        let seeded: Vec<Seeded> = made
            .into_iter()
            .map(|(id, (nhs, family))| Seeded { id, nhs, family })
            .collect();
        let seeded = Arc::new(seeded);
        self.seeded = Some(seeded.clone());
        Ok(seeded)
    }

    pub(crate) async fn create(&mut self) -> Result<WorkloadReport, BenchError> {
        let job = Arc::new(CreateJob {
            path: self.target.path("/Patient"),
            nhs: self.nhs.clone(),
        });
        let out = engine::drive(self.target.clone(), job, &self.plan(1)).await?;
        Ok(self.report("create", &out, "the test-range NHS numbers ran out"))
    }

    pub(crate) async fn read(&mut self) -> Result<WorkloadReport, BenchError> {
        let seeded = self.seeded().await?;
        let job = Arc::new(ReadJob {
            paths: seeded
                .iter()
                .map(|s| self.target.path(&format!("/Patient/{}", s.id)))
                .collect(),
        });
        let out = engine::drive(self.target.clone(), job, &self.plan(2)).await?;
        Ok(self.report("read", &out, ""))
    }

    pub(crate) async fn search_identifier(&mut self) -> Result<WorkloadReport, BenchError> {
        let seeded = self.seeded().await?;
        let job = Arc::new(SearchJob {
            queries: seeded
                .iter()
                .map(|s| {
                    (
                        // '|' percent-encoded; the server decodes before splitting.
                        self.target
                            .path(&format!("/Patient?identifier={}%7C{}", data::NHS_NUMBER_SYSTEM, s.nhs)),
                        s.nhs.clone().into_bytes(),
                    )
                })
                .collect(),
        });
        let out = engine::drive(self.target.clone(), job, &self.plan(3)).await?;
        let mut r = self.report("search-identifier", &out, "");
        r.misses = Some(out.tally.misses);
        Ok(r)
    }

    pub(crate) async fn search_family(&mut self) -> Result<WorkloadReport, BenchError> {
        let seeded = self.seeded().await?;
        let job = Arc::new(SearchJob {
            queries: seeded
                .iter()
                .map(|s| {
                    (
                        self.target.path(&format!("/Patient?family={}&_count=10", s.family)),
                        s.family.as_bytes().to_vec(),
                    )
                })
                .collect(),
        });
        let out = engine::drive(self.target.clone(), job, &self.plan(4)).await?;
        let mut r = self.report("search-family", &out, "");
        r.misses = Some(out.tally.misses);
        Ok(r)
    }

    pub(crate) async fn book(&mut self) -> Result<WorkloadReport, BenchError> {
        let seeded = self.seeded().await?;
        let timeout = self.timeout();

        // Location, then Schedule, on one connection.
        let mut client = Client::new(self.target.clone());
        let location = create_one(&mut client, &self.target, "Location", data::location_body(), timeout).await?;
        let schedule = create_one(
            &mut client,
            &self.target,
            "Schedule",
            data::schedule_body(&location),
            timeout,
        )
        .await?;
        drop(client);

        // Slots: 15 minutes each, back to back, on a run-specific day from
        // 2030 onwards so runs against the same database do not overlap.
        let day = (self.seed % 3650) as i64;
        let first_s = data::SLOTS_EPOCH_S + day * 86_400;
        let slots = engine::create_many(
            self.target.clone(),
            &format!("creating {} slots", self.opts.book_slots),
            "Slot",
            self.opts.book_slots,
            self.opts.setup_connections,
            timeout,
            self.seed ^ 0x5EED_0002,
            move |i, _| {
                let start_s = first_s + i as i64 * 900;
                let start = data::format_utc(start_s);
                let end = data::format_utc(start_s + 900);
                Ok((data::slot_body(&schedule, &start, &end), (start, end)))
            },
        )
        .await?;

        let contenders = self.opts.book_contenders_per_slot;
        let job = Arc::new(BookJob {
            path: self.target.path("/Appointment"),
            wins: slots.iter().map(|_| AtomicU32::new(0)).collect(),
            slots,
            patients: seeded,
            contenders: contenders as u64,
            next_ticket: AtomicU64::new(0),
        });
        let out = engine::drive(self.target.clone(), job.clone(), &self.plan(5)).await?;

        let attempts = job
            .next_ticket
            .load(Ordering::Relaxed)
            .min(job.slots.len() as u64 * job.contenders);
        let mut slots_booked = 0;
        let mut double_bookings = 0;
        for w in &job.wins {
            match w.load(Ordering::Relaxed) {
                0 => {}
                1 => slots_booked += 1,
                _ => {
                    slots_booked += 1;
                    double_bookings += 1;
                }
            }
        }
        let dry = format!("every slot had its {contenders} booking attempts (raise book_slots for a longer race)");
        let mut r = self.report("book", &out, &dry);
        r.booking = Some(BookingFigures {
            slots: job.slots.len(),
            contenders_per_slot: contenders,
            attempts,
            slots_booked,
            conflicts: out.tally.conflicts,
            double_bookings,
            slots_exhausted: out.ran_dry,
        });
        if double_bookings > 0 {
            r.notes.push(format!(
                "CORRECTNESS: {double_bookings} slots were booked more than once (two 201s for one slot)"
            ));
        }
        Ok(r)
    }

    /// Any search: a fixed cycle of clinical searches with random parameters
    /// (see `mix`). Uses the server's demo patients if it has them, else the
    /// seeded patients (seeding them if this run has not yet).
    pub(crate) async fn search_mix(&mut self) -> Result<WorkloadReport, BenchError> {
        let mut rng = Rng::new(self.seed ^ 0x5EED_0003);
        let found = mix::discover(&self.target, self.timeout(), &mut rng).await?;
        let mut notes = found.notes;
        let mut nhs_numbers: Vec<String> = found.sample.iter().filter_map(|f| f.nhs.clone()).collect();
        let mut families: Vec<String> = found.sample.iter().filter_map(|f| f.family.clone()).collect();
        let mut givens: Vec<String> = found.sample.iter().filter_map(|f| f.given.clone()).collect();

        let patients = if !self.opts.mix_patients.is_empty() {
            notes.push(format!(
                "per-patient searches use only: {}",
                self.opts.mix_patients.join(", ")
            ));
            Ids::Listed(self.opts.mix_patients.clone())
        } else if found.demo_patients > 0 {
            notes.push(format!(
                "searching {} demo patients (pat-000001 … {}); parameters from a sample of {}",
                found.demo_patients,
                mix::numbered_id("pat", found.demo_patients),
                found.sample.len()
            ));
            Ids::Numbered {
                prefix: "pat",
                count: found.demo_patients,
            }
        } else {
            if self.seeded.is_none() && self.opts.seed_patients == 0 {
                return Err(BenchError::InvalidOption {
                    message: "the server has no demo patients (Patient/pat-000001 not found) and seed_patients \
                              is 0: start it with `hale serve --demo` or set seed_patients to at least 1"
                        .to_string(),
                });
            }
            let seeded = self.seeded().await?;
            notes.push(format!(
                "no demo patients on the server (Patient/pat-000001 not found): searching the {} seeded patients",
                seeded.len()
            ));
            Ids::Listed(seeded.iter().map(|s| s.id.clone()).collect())
        };
        if let Some(seeded) = &self.seeded {
            nhs_numbers.extend(seeded.iter().map(|s| s.nhs.clone()));
            families.extend(seeded.iter().map(|s| s.family.to_string()));
        }
        if givens.is_empty() {
            givens = GIVEN_FEMALE.iter().chain(&GIVEN_MALE).map(|s| s.to_string()).collect();
        }
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let data = MixData {
            patients,
            nhs_numbers,
            families,
            givens,
            locations: found.locations,
            schedules: found.schedules,
            slots: found.slots.unwrap_or(Ids::Listed(Vec::new())),
            today: mix::utc_date(now_s),
            tomorrow: mix::utc_date(now_s + 86_400),
        };
        let cycle = data
            .cycle_of(&self.opts.mix_kinds)
            .map_err(|message| BenchError::InvalidOption { message })?;
        if cycle.is_empty() {
            return Err(BenchError::InvalidOption {
                message: "--kinds leaves no search kind the server has data for".into(),
            });
        }
        let job = Arc::new(MixJob::new(&self.target, data, cycle));
        let fed = job.fed();
        let left_out: Vec<&str> = MixKind::ALL
            .iter()
            .filter(|k| !fed.contains(k))
            .map(|k| k.name())
            .collect();
        if !left_out.is_empty() {
            notes.push(format!(
                "not run, nothing on the server to search for (e.g. no Location, Schedule or Slot): {}",
                left_out.join(", ")
            ));
        }

        let out = engine::drive(self.target.clone(), job.clone(), &self.plan(6)).await?;
        let mut r = self.report("search-mix", &out, "");
        let figures = job.figures();
        if let Some(s) = mix::slowest(&figures) {
            r.notes.push(format!(
                "slowest search kind by p99: {} ({:.2} ms): {}",
                s.kind,
                s.latency.p99_ms.unwrap_or(0.0),
                s.request
            ));
        }
        r.notes.extend(notes);
        r.search_kinds = Some(figures);
        Ok(r)
    }

    /// `dry` says why the job may run out of work (for the notes).
    fn report(&self, name: &str, out: &Outcome, dry: &str) -> WorkloadReport {
        let t = &out.tally;
        let errors_total = t.errors.values().sum();
        let throughput_per_s = if out.elapsed_s > 0.0 {
            t.ok as f64 / out.elapsed_s
        } else {
            0.0
        };
        let mut notes = Vec::new();
        if out.capped {
            notes.push(format!(
                "stopped early: requests_max ({}) reached",
                self.opts.requests_max.unwrap_or(0)
            ));
        }
        if let Some(at) = out.ran_dry_at_s {
            if at < 0.0 {
                notes.push(format!(
                    "stopped during warm-up, nothing was timed: {dry} (lower warmup_s)"
                ));
            } else {
                notes.push(format!("stopped {at:.1} s into the timed phase: {dry}"));
            }
        }
        if t.requests > 0 && t.ok == 0 {
            notes.push("no request succeeded — see errors".to_string());
        }
        WorkloadReport {
            name: name.to_string(),
            connections: self.opts.connections,
            requests: t.requests,
            ok: t.ok,
            errors: t.errors.clone(),
            errors_total,
            elapsed_s: out.elapsed_s,
            throughput_per_s,
            latency: Latency::from_histogram(&t.hist),
            reconnects: t.reconnects,
            misses: None,
            booking: None,
            search_kinds: None,
            notes,
        }
    }
}

async fn create_one(
    client: &mut Client,
    target: &Target,
    resource_type: &str,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<String, BenchError> {
    let path = target.path(&format!("/{resource_type}"));
    let what = format!("setting up booking: POST {path}");
    let resp = client
        .send(Method::POST, &path, Some(body), timeout)
        .await
        .map_err(|f| failure_error(target, &what, f, timeout))?;
    if resp.status != 201 && resp.status != 200 {
        return Err(status_error(target, &what, &resp));
    }
    created_id(resource_type, &resp).ok_or_else(|| BenchError::UnexpectedStatus {
        what: format!("{what} gave no id in the body or Location header"),
        status: resp.status,
        body: crate::client::snippet(&resp.body),
    })
}

fn status_class(resp: &Response, ok: u16) -> Class {
    if resp.status == ok {
        Class::Ok
    } else {
        Class::Error
    }
}

/// POST a new patient with a fresh NHS number.
struct CreateJob {
    path: String,
    nhs: Arc<NhsGen>,
}

impl Job for CreateJob {
    fn next(&self, rng: &mut Rng) -> Option<Req> {
        let number = self.nhs.next()?;
        let family = *rng.pick(&SURNAMES);
        Some(Req {
            method: Method::POST,
            path: self.path.clone(),
            body: Some(data::patient_body(rng, &number, family)),
            tag: 0,
        })
    }

    fn classify(&self, _: &Req, resp: &Response) -> Class {
        status_class(resp, 201)
    }
}

/// GET a random seeded patient.
struct ReadJob {
    paths: Vec<String>,
}

impl Job for ReadJob {
    fn next(&self, rng: &mut Rng) -> Option<Req> {
        Some(Req {
            method: Method::GET,
            path: rng.pick(&self.paths).clone(),
            body: None,
            tag: 0,
        })
    }

    fn classify(&self, _: &Req, resp: &Response) -> Class {
        status_class(resp, 200)
    }
}

/// GET a search for a random seeded patient; 200 counts only if the body
/// mentions what was searched for (NHS number or family name).
struct SearchJob {
    /// (request path, bytes the matching bundle must contain)
    queries: Vec<(String, Vec<u8>)>,
}

impl Job for SearchJob {
    fn next(&self, rng: &mut Rng) -> Option<Req> {
        let i = rng.below(self.queries.len());
        Some(Req {
            method: Method::GET,
            path: self.queries[i].0.clone(),
            body: None,
            tag: i,
        })
    }

    fn classify(&self, req: &Req, resp: &Response) -> Class {
        match resp.status {
            200 if data::contains(&resp.body, &self.queries[req.tag].1) => Class::Ok,
            200 => Class::Miss,
            _ => Class::Error,
        }
    }
}

/// Race to book: ticket t goes for slot t / contenders, so `contenders`
/// attempts (by different random patients) compete for every slot.
struct BookJob {
    path: String,
    /// (slot id, (start, end))
    slots: Vec<(String, (String, String))>,
    /// 201s per slot, warm-up included.
    wins: Vec<AtomicU32>,
    patients: Arc<Vec<Seeded>>,
    contenders: u64,
    next_ticket: AtomicU64,
}

impl Job for BookJob {
    fn next(&self, rng: &mut Rng) -> Option<Req> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let slot = usize::try_from(ticket / self.contenders).ok()?;
        let (slot_id, (start, end)) = self.slots.get(slot)?;
        let patient = rng.pick(&self.patients);
        Some(Req {
            method: Method::POST,
            path: self.path.clone(),
            body: Some(data::appointment_body(slot_id, start, end, &patient.id)),
            tag: slot,
        })
    }

    fn classify(&self, req: &Req, resp: &Response) -> Class {
        match resp.status {
            201 => {
                self.wins[req.tag].fetch_add(1, Ordering::Relaxed);
                Class::Ok
            }
            409 => Class::Conflict,
            _ => Class::Error,
        }
    }
}
