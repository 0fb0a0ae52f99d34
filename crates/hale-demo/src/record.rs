//! The rest of the record: problems, medicines, alerts, immunisations and past
//! procedures for every patient ([`record`], its own PRNG stream per patient,
//! so the older resource types come out exactly as before), and, after the
//! appointments, the treatment of chemotherapy and inpatient patients
//! ([`treatment`]): the cancer and its regimen (CarePlan), each cycle's or
//! admission's prescriptions (MedicationRequest with timed doses) and, for
//! what is already past, the doses given (MedicationAdministration).
//!
//! The sense a clinician would check: problems follow age, every long-term
//! medicine has the problem it treats, doses are ordinary adult doses with a
//! route and a frequency, so no one under `ADULT_DOSE_AGE` is prescribed one
//! (a child's asthma or epilepsy is recorded, its weight-based dose is not
//! generated), and chemotherapy is given on the days of the chemotherapy
//! appointments.

use std::collections::VecDeque;

use chrono::NaiveDate;
use serde_json::Value;

use crate::rng::Rng;
use crate::util::{self, arr, coded, coding, concept, fmt_date, fmt_instant, obj, reference};
use crate::{age_on, nid, prac_id, SNOMED, UCUM};

const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const MED_REQUEST_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/medicationrequest-category";
const FLAG_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/flag-category";
const ALERT_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/alert";
const CAREPLAN_CATEGORY_TEXT: &str = "Systemic anti-cancer therapy regimen";
/// The doses in the tables are adult doses: no one younger is prescribed one.
const ADULT_DOSE_AGE: i32 = 16;

/// A route of administration (SNOMED CT).
#[derive(Clone, Copy)]
pub(crate) struct Route(&'static str, &'static str);
const ORAL: Route = Route("26643006", "Oral route");
const INHALED: Route = Route("447694001", "Respiratory tract route");
const SUBCUT: Route = Route("34206005", "Subcutaneous route");
const IV: Route = Route("47625008", "Intravenous route");

/// One medicine with its usual adult dose.
pub(crate) struct Medicine {
    /// What the prescription names (product and strength).
    pub product: &'static str,
    pub dose: f64,
    /// UCUM unit of `dose`, and how a person writes it.
    pub unit: (&'static str, &'static str),
    pub route: Route,
    /// Scheduled times of day (24 h, local); empty: when required.
    pub times: &'static [&'static str],
    /// The sig as a person writes it.
    pub text: &'static str,
}

const fn med(
    product: &'static str,
    dose: f64,
    unit: (&'static str, &'static str),
    route: Route,
    times: &'static [&'static str],
    text: &'static str,
) -> Medicine {
    Medicine {
        product,
        dose,
        unit,
        route,
        times,
        text,
    }
}

const MG: (&str, &str) = ("mg", "mg");
const MICROGRAM: (&str, &str) = ("ug", "micrograms");
const PUFF: (&str, &str) = ("{puff}", "puffs");
const G: (&str, &str) = ("g", "g");
const MORNING: &[&str] = &["08:00"];
const NIGHT: &[&str] = &["22:00"];
const EVENING: &[&str] = &["18:00"];
const TWICE: &[&str] = &["08:00", "18:00"];
const FOUR_TIMES: &[&str] = &["08:00", "12:00", "18:00", "22:00"];
const WHEN_REQUIRED: &[&str] = &[];

/// A long-term problem, the age from which it is drawn, its chance per
/// patient of that age, and the medicines that treat it (one is drawn, and a
/// second with half the chance).
pub(crate) struct Problem {
    pub code: &'static str,
    pub display: &'static str,
    pub min_age: i32,
    pub chance: f64,
    pub medicines: &'static [Medicine],
}

pub(crate) const PROBLEMS: &[Problem] = &[
    Problem {
        code: "59621000",
        display: "Essential hypertension",
        min_age: 35,
        chance: 0.22,
        medicines: &[
            med(
                "Amlodipine 5 mg tablets",
                5.0,
                MG,
                ORAL,
                MORNING,
                "5 mg orally once daily",
            ),
            med(
                "Ramipril 5 mg capsules",
                5.0,
                MG,
                ORAL,
                MORNING,
                "5 mg orally once daily",
            ),
        ],
    },
    Problem {
        code: "44054006",
        display: "Type 2 diabetes mellitus",
        min_age: 30,
        chance: 0.08,
        medicines: &[
            med(
                "Metformin 500 mg tablets",
                1000.0,
                MG,
                ORAL,
                TWICE,
                "1 g orally twice daily with meals",
            ),
            med(
                "Gliclazide 80 mg tablets",
                80.0,
                MG,
                ORAL,
                MORNING,
                "80 mg orally once daily with breakfast",
            ),
        ],
    },
    Problem {
        code: "195967001",
        display: "Asthma",
        min_age: 5,
        chance: 0.08,
        medicines: &[
            med(
                "Salbutamol 100 micrograms/dose inhaler",
                2.0,
                PUFF,
                INHALED,
                WHEN_REQUIRED,
                "2 puffs inhaled when required, up to 4 times daily",
            ),
            med(
                "Beclometasone 100 micrograms/dose inhaler",
                2.0,
                PUFF,
                INHALED,
                TWICE,
                "2 puffs inhaled twice daily",
            ),
        ],
    },
    Problem {
        code: "13645005",
        display: "Chronic obstructive lung disease",
        min_age: 45,
        chance: 0.05,
        medicines: &[med(
            "Tiotropium 2.5 micrograms/dose inhaler",
            2.0,
            PUFF,
            INHALED,
            MORNING,
            "2 puffs inhaled once daily",
        )],
    },
    Problem {
        code: "49436004",
        display: "Atrial fibrillation",
        min_age: 55,
        chance: 0.06,
        medicines: &[
            med("Apixaban 5 mg tablets", 5.0, MG, ORAL, TWICE, "5 mg orally twice daily"),
            med(
                "Bisoprolol 2.5 mg tablets",
                2.5,
                MG,
                ORAL,
                MORNING,
                "2.5 mg orally once daily",
            ),
        ],
    },
    Problem {
        code: "414545008",
        display: "Ischaemic heart disease",
        min_age: 45,
        chance: 0.06,
        medicines: &[
            med(
                "Atorvastatin 80 mg tablets",
                80.0,
                MG,
                ORAL,
                NIGHT,
                "80 mg orally once daily at night",
            ),
            med(
                "Aspirin 75 mg dispersible tablets",
                75.0,
                MG,
                ORAL,
                MORNING,
                "75 mg orally once daily",
            ),
        ],
    },
    Problem {
        code: "84114007",
        display: "Heart failure",
        min_age: 60,
        chance: 0.03,
        medicines: &[med(
            "Furosemide 40 mg tablets",
            40.0,
            MG,
            ORAL,
            MORNING,
            "40 mg orally once daily in the morning",
        )],
    },
    Problem {
        code: "40930008",
        display: "Hypothyroidism",
        min_age: 25,
        chance: 0.04,
        medicines: &[med(
            "Levothyroxine 100 microgram tablets",
            100.0,
            MICROGRAM,
            ORAL,
            MORNING,
            "100 micrograms orally once daily before breakfast",
        )],
    },
    Problem {
        code: "35489007",
        display: "Depressive disorder",
        min_age: 18,
        chance: 0.07,
        medicines: &[med(
            "Sertraline 50 mg tablets",
            50.0,
            MG,
            ORAL,
            MORNING,
            "50 mg orally once daily",
        )],
    },
    Problem {
        code: "396275006",
        display: "Osteoarthritis",
        min_age: 50,
        chance: 0.10,
        medicines: &[med(
            "Paracetamol 500 mg tablets",
            1.0,
            G,
            ORAL,
            WHEN_REQUIRED,
            "1 g orally up to 4 times daily when required; at least 4 hours apart; no more than 4 g in 24 hours",
        )],
    },
    Problem {
        code: "84757009",
        display: "Epilepsy",
        min_age: 2,
        chance: 0.008,
        medicines: &[med(
            "Levetiracetam 500 mg tablets",
            500.0,
            MG,
            ORAL,
            TWICE,
            "500 mg orally twice daily",
        )],
    },
    Problem {
        code: "433144002",
        display: "Chronic kidney disease stage 3",
        min_age: 60,
        chance: 0.05,
        medicines: &[],
    },
];

/// Alerts: (code, text, flag category code, category display, chance).
const ALERTS: &[(&str, &str, &str, &str, f64)] = &[
    (
        "difficult-airway",
        "Difficult airway: senior anaesthetist for any general anaesthetic",
        "safety",
        "Safety",
        0.01,
    ),
    (
        "lives-alone",
        "Lives alone: check support before discharge or a cancelled appointment",
        "safety",
        "Safety",
        0.05,
    ),
    ("interpreter", "Interpreter needed", "admin", "Administrative", 0.03),
    ("falls-risk", "High risk of falls", "safety", "Safety", 0.03),
    (
        "hearing-impaired",
        "Hearing impaired: use the text relay service",
        "contact",
        "Subject contact",
        0.02,
    ),
    (
        "mrsa",
        "MRSA positive: isolate on admission",
        "clinical",
        "Clinical",
        0.01,
    ),
];

/// Interpreter languages (for the interpreter alert).
const LANGUAGES: &[&str] = &[
    "Polish",
    "Urdu",
    "Punjabi",
    "Arabic",
    "Mandarin",
    "Romanian",
    "Farsi",
    "British Sign Language",
];

/// Past procedures: (SNOMED code, display, min age, chance).
const PROCEDURES: &[(&str, &str, i32, f64)] = &[
    ("80146002", "Appendectomy", 8, 0.04),
    ("38102005", "Cholecystectomy", 25, 0.04),
    ("54885007", "Cataract extraction", 60, 0.08),
    ("52734007", "Total replacement of hip", 60, 0.04),
    ("609588000", "Total knee replacement", 60, 0.04),
    ("173422009", "Tonsillectomy", 4, 0.05),
    ("44558001", "Repair of inguinal hernia", 30, 0.03),
];

/// A chemotherapy regimen: its cancer (SNOMED), name, and the drugs given on
/// each treatment day, with their doses.
pub(crate) struct Regimen {
    pub cancer: (&'static str, &'static str),
    pub name: &'static str,
    pub drugs: &'static [Medicine],
}

pub(crate) const REGIMENS: &[Regimen] = &[
    Regimen {
        cancer: ("254837009", "Malignant neoplasm of breast"),
        name: "EC (epirubicin, cyclophosphamide), 21-day cycle",
        drugs: &[
            med(
                "Epirubicin",
                180.0,
                MG,
                IV,
                &["09:30"],
                "90 mg/m2 (180 mg) IV bolus on day 1",
            ),
            med(
                "Cyclophosphamide",
                1200.0,
                MG,
                IV,
                &["10:00"],
                "600 mg/m2 (1,200 mg) IV infusion over 30 minutes on day 1",
            ),
            med(
                "Ondansetron 8 mg tablets",
                8.0,
                MG,
                ORAL,
                &["09:00"],
                "8 mg orally before chemotherapy",
            ),
        ],
    },
    Regimen {
        cancer: ("363406005", "Malignant neoplasm of colon"),
        name: "FOLFOX (oxaliplatin, folinic acid, fluorouracil), 14-day cycle",
        drugs: &[
            med(
                "Oxaliplatin",
                170.0,
                MG,
                IV,
                &["09:30"],
                "85 mg/m2 (170 mg) IV infusion over 2 hours on day 1",
            ),
            med(
                "Folinic acid",
                700.0,
                MG,
                IV,
                &["09:30"],
                "350 mg (flat) IV infusion over 2 hours on day 1",
            ),
            med(
                "Fluorouracil",
                800.0,
                MG,
                IV,
                &["11:30"],
                "400 mg/m2 (800 mg) IV bolus on day 1",
            ),
        ],
    },
    Regimen {
        cancer: ("118601006", "Non-Hodgkin's lymphoma"),
        name: "R-CHOP (rituximab, cyclophosphamide, doxorubicin, vincristine, prednisolone), 21-day cycle",
        drugs: &[
            med(
                "Rituximab",
                750.0,
                MG,
                IV,
                &["09:30"],
                "375 mg/m2 (750 mg) IV infusion on day 1",
            ),
            med(
                "Cyclophosphamide",
                1500.0,
                MG,
                IV,
                &["13:00"],
                "750 mg/m2 (1,500 mg) IV infusion on day 1",
            ),
            med(
                "Doxorubicin",
                100.0,
                MG,
                IV,
                &["13:30"],
                "50 mg/m2 (100 mg) IV bolus on day 1",
            ),
            med(
                "Vincristine",
                2.0,
                MG,
                IV,
                &["14:00"],
                "1.4 mg/m2, capped at 2 mg, IV infusion on day 1",
            ),
            med(
                "Prednisolone 25 mg tablets",
                100.0,
                MG,
                ORAL,
                &["09:00"],
                "100 mg orally once daily, days 1 to 5",
            ),
        ],
    },
    Regimen {
        cancer: ("363358000", "Malignant tumor of lung"),
        name: "Carboplatin and pemetrexed, 21-day cycle",
        drugs: &[
            med(
                "Pemetrexed",
                1000.0,
                MG,
                IV,
                &["09:30"],
                "500 mg/m2 (1,000 mg) IV infusion over 10 minutes on day 1",
            ),
            med(
                "Carboplatin",
                600.0,
                MG,
                IV,
                &["10:00"],
                "AUC 5 (600 mg) IV infusion over 60 minutes on day 1",
            ),
        ],
    },
];

/// What an inpatient is written up for, from admission to discharge.
const INPATIENT_CHART: &[Medicine] = &[
    med(
        "Enoxaparin 40 mg/0.4 mL injection",
        40.0,
        MG,
        SUBCUT,
        EVENING,
        "40 mg subcutaneously once daily at 18:00 (VTE prophylaxis)",
    ),
    med(
        "Paracetamol 500 mg tablets",
        1.0,
        G,
        ORAL,
        FOUR_TIMES,
        "1 g orally four times daily",
    ),
    med(
        "Omeprazole 20 mg capsules",
        20.0,
        MG,
        ORAL,
        MORNING,
        "20 mg orally once daily",
    ),
];

/// Ids handed out so far (numbering runs across patients).
#[derive(Debug, Default)]
pub(crate) struct RecordCounters {
    pub conditions: usize,
    pub medication_requests: usize,
    pub medication_statements: usize,
    pub administrations: usize,
    pub flags: usize,
    pub immunizations: usize,
    pub procedures: usize,
    pub care_plans: usize,
}

fn dosage(m: &Medicine, bounds: Option<(String, String)>) -> Value {
    let mut repeat = serde_json::Map::new();
    if let Some((start, end)) = bounds {
        repeat.insert("boundsPeriod".into(), obj! { "start": start, "end": end });
    }
    if m.times.is_empty() {
        repeat.insert("frequency".into(), Value::from(4));
        repeat.insert("period".into(), Value::from(1));
        repeat.insert("periodUnit".into(), Value::from("d"));
    } else {
        repeat.insert("frequency".into(), Value::from(m.times.len()));
        repeat.insert("period".into(), Value::from(1));
        repeat.insert("periodUnit".into(), Value::from("d"));
        repeat.insert(
            "timeOfDay".into(),
            Value::Array(m.times.iter().map(|t| Value::from(format!("{t}:00"))).collect()),
        );
    }
    let mut d = serde_json::Map::new();
    d.insert("text".into(), Value::from(m.text));
    d.insert("timing".into(), obj! { "repeat": Value::Object(repeat) });
    if m.times.is_empty() {
        d.insert("asNeededBoolean".into(), Value::Bool(true));
    }
    d.insert("route".into(), concept(SNOMED, m.route.0, m.route.1));
    d.insert("doseAndRate".into(), arr![obj! { "doseQuantity": dose_quantity(m) }]);
    Value::Object(d)
}

fn dose_quantity(m: &Medicine) -> Value {
    let value = if m.dose.fract() == 0.0 {
        Value::from(m.dose as i64)
    } else {
        serde_json::Number::from_f64(m.dose).map_or(Value::Null, Value::Number)
    };
    obj! { "value": value, "unit": m.unit.1, "system": UCUM, "code": m.unit.0 }
}

/// An active, confirmed problem-list Condition (SNOMED `code`) since `onset`;
/// returns its id.
fn problem(
    n: &mut RecordCounters,
    code: (&str, &str),
    subject: &Value,
    onset: NaiveDate,
    out: &mut VecDeque<Value>,
) -> String {
    n.conditions += 1;
    let id = nid("cond", n.conditions);
    out.push_back(obj! {
        "resourceType": "Condition",
        "id": &id,
        "clinicalStatus": coded(CONDITION_CLINICAL, "active", "Active"),
        "verificationStatus": coded(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
        "category": arr![coded(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
        "code": concept(SNOMED, code.0, code.1),
        "subject": subject,
        "onsetDateTime": fmt_date(onset),
        "recordedDate": fmt_date(onset),
    });
    id
}

/// Problems, medicines, alerts, immunisations and procedures of patient
/// `index` (born `birth`), onto `out`, in an order in which every reference
/// points backwards.
pub(crate) fn record(
    rng: &mut Rng,
    today: NaiveDate,
    index: usize,
    birth: NaiveDate,
    gp: Option<&str>,
    n: &mut RecordCounters,
    out: &mut VecDeque<Value>,
) {
    let age = age_on(birth, today);
    let age_days = (today - birth).num_days();
    let subject = reference("Patient", &nid("pat", index + 1));
    for p in PROBLEMS {
        if age < p.min_age || !rng.chance(p.chance) {
            continue;
        }
        let years_with = (age - p.min_age + 1).clamp(1, 25) as i64;
        let onset = util::day(today, -rng.range(60, years_with * 365).min(age_days - 1));
        let cond_id = problem(n, (p.code, p.display), &subject, onset, out);
        if p.medicines.is_empty() || age < ADULT_DOSE_AGE {
            continue;
        }
        let first = rng.below(p.medicines.len() as u64) as usize;
        let mut chosen = vec![first];
        if p.medicines.len() > 1 && rng.chance(0.5) {
            chosen.push((first + 1) % p.medicines.len());
        }
        for m in chosen.into_iter().map(|k| &p.medicines[k]) {
            let started = util::day(today, -rng.range(30, (today - onset).num_days().max(30)));
            n.medication_requests += 1;
            let mut rx = obj! {
                "resourceType": "MedicationRequest",
                "id": nid("medrx", n.medication_requests),
                "status": "active",
                "intent": "order",
                "category": arr![coded(MED_REQUEST_CATEGORY, "community", "Community")],
                "medicationCodeableConcept": obj! { "text": m.product },
                "subject": &subject,
                "authoredOn": fmt_date(started),
                "reasonReference": arr![reference("Condition", &cond_id)],
                "dosageInstruction": arr![dosage(m, None)],
            };
            if let Some(gp) = gp {
                rx["requester"] = reference("Organization", gp);
            }
            out.push_back(rx);
        }
    }
    // Over-the-counter medicines the patient reports.
    if age >= 16 && rng.chance(0.06) {
        let (product, text) = *rng.pick(&[
            (
                "Cetirizine 10 mg tablets",
                "10 mg orally once daily in the hay fever season",
            ),
            (
                "Ibuprofen 200 mg tablets",
                "400 mg orally up to three times daily when required, with food",
            ),
            ("Vitamin D 25 microgram capsules", "25 micrograms orally once daily"),
        ]);
        n.medication_statements += 1;
        out.push_back(obj! {
            "resourceType": "MedicationStatement",
            "id": nid("medst", n.medication_statements),
            "status": "active",
            "medicationCodeableConcept": obj! { "text": product },
            "subject": &subject,
            "dateAsserted": fmt_date(util::day(today, -rng.range(1, 400))),
            "informationSource": &subject,
            "dosage": arr![obj! { "text": text, "route": concept(SNOMED, ORAL.0, ORAL.1) }],
        });
    }
    for &(code, text, cat, cat_display, chance) in ALERTS {
        let applies = match code {
            "lives-alone" | "falls-risk" => age >= 70,
            "difficult-airway" | "mrsa" => age >= 16,
            _ => true,
        };
        if !applies || !rng.chance(chance) {
            continue;
        }
        let text = if code == "interpreter" {
            format!("Interpreter needed: {}", rng.pick(LANGUAGES))
        } else {
            text.to_string()
        };
        n.flags += 1;
        out.push_back(obj! {
            "resourceType": "Flag",
            "id": nid("flag", n.flags),
            "status": "active",
            "category": arr![coded(FLAG_CATEGORY, cat, cat_display)],
            "code": obj! { "coding": arr![coding(ALERT_SYSTEM, code, &text)], "text": text },
            "subject": &subject,
            "period": obj! { "start": fmt_date(util::day(today, -rng.range(7, 1500.min(age_days.max(8))))) },
        });
    }
    // This season's flu vaccine from 65, and a COVID-19 booster from 75.
    let season_start = -rng.range(20, 70);
    for (min_age, text, chance) in [
        (65, "Influenza vaccine (inactivated), seasonal", 0.75),
        (75, "COVID-19 mRNA vaccine, booster", 0.6),
    ] {
        if age < min_age || !rng.chance(chance) {
            continue;
        }
        n.immunizations += 1;
        out.push_back(obj! {
            "resourceType": "Immunization",
            "id": nid("imm", n.immunizations),
            "status": "completed",
            "vaccineCode": obj! { "text": text },
            "patient": &subject,
            "occurrenceDateTime": fmt_date(util::day(today, season_start + rng.range(0, 14))),
            "primarySource": false,
            "route": concept(SNOMED, "78421000", "Intramuscular route"),
        });
    }
    for &(code, display, min_age, chance) in PROCEDURES {
        if age < min_age || !rng.chance(chance) {
            continue;
        }
        let when = util::day(
            today,
            -rng.range(90, ((age - min_age + 1) as i64 * 365).min(age_days - 1).max(91)),
        );
        n.procedures += 1;
        out.push_back(obj! {
            "resourceType": "Procedure",
            "id": nid("proc", n.procedures),
            "status": "completed",
            "code": concept(SNOMED, code, display),
            "subject": &subject,
            "performedDateTime": fmt_date(when),
        });
    }
}

/// One booked or past chemotherapy or inpatient appointment of a patient.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Treated {
    pub patient: u32,
    /// Minutes from `today` 00:00Z.
    pub start: i64,
    pub chemo: bool,
    /// Fulfilled (the doses were given), or still to come.
    pub given: bool,
    /// The clinic's lead consultant (prescriber).
    pub prescriber: u32,
}

/// Treatment of one patient, from all their chemotherapy and inpatient
/// appointments (in time order): for chemotherapy, the cancer, the regimen
/// (CarePlan) and each cycle's prescriptions; for an admission, the ward
/// chart from admission for `STAY_DAYS`; and the doses already given.
pub(crate) fn treatment(
    rng: &mut Rng,
    today: NaiveDate,
    birth: NaiveDate,
    items: &[Treated],
    n: &mut RecordCounters,
    out: &mut VecDeque<Value>,
) {
    /// Days an inpatient stays (the chart runs this long from admission).
    const STAY_DAYS: i64 = 3;
    let Some(first) = items.first() else { return };
    let subject = reference("Patient", &nid("pat", first.patient as usize + 1));
    let age_days = (today - birth).num_days();
    let mut regimen_plan: Option<(String, &Regimen)> = None;
    for t in items {
        let prescriber = reference("Practitioner", &prac_id(t.prescriber as usize));
        let day = t.start.div_euclid(1440);
        let meds: Vec<(&Medicine, (String, String))> = if t.chemo {
            if regimen_plan.is_none() {
                let r = rng.pick(REGIMENS);
                let diagnosed = util::day(today, day - rng.range(30, 120).min(age_days - 1));
                let cond_id = problem(n, r.cancer, &subject, diagnosed, out);
                n.care_plans += 1;
                let cp_id = nid("cp", n.care_plans);
                out.push_back(obj! {
                    "resourceType": "CarePlan",
                    "id": &cp_id,
                    "status": "active",
                    "intent": "plan",
                    "category": arr![obj! { "text": CAREPLAN_CATEGORY_TEXT }],
                    "title": r.name,
                    "description": format!("{} for {}", r.name, r.cancer.1.to_lowercase()),
                    "subject": &subject,
                    "period": obj! { "start": fmt_date(util::day(today, day.min(0) - rng.range(0, 60))) },
                    "author": &prescriber,
                    "addresses": arr![reference("Condition", &cond_id)],
                });
                regimen_plan = Some((cp_id, r));
            }
            let (_, r) = regimen_plan.as_ref().expect("set above");
            let on = fmt_date(util::day(today, day));
            r.drugs.iter().map(|m| (m, (on.clone(), on.clone()))).collect()
        } else {
            let from = fmt_date(util::day(today, day));
            let to = fmt_date(util::day(today, day + STAY_DAYS - 1));
            INPATIENT_CHART
                .iter()
                .map(|m| (m, (from.clone(), to.clone())))
                .collect()
        };
        for (m, bounds) in meds {
            n.medication_requests += 1;
            let rx_id = nid("medrx", n.medication_requests);
            let ended = t.given && day + if t.chemo { 0 } else { STAY_DAYS - 1 } < 0;
            let mut rx = obj! {
                "resourceType": "MedicationRequest",
                "id": &rx_id,
                "status": if ended { "completed" } else { "active" },
                "intent": "order",
                "category": arr![coded(MED_REQUEST_CATEGORY, "inpatient", "Inpatient")],
                "medicationCodeableConcept": obj! { "text": m.product },
                "subject": &subject,
                "authoredOn": fmt_date(util::day(today, day - 1)),
                "requester": &prescriber,
                "dosageInstruction": arr![dosage(m, Some(bounds.clone()))],
            };
            if let (true, Some((cp_id, _))) = (t.chemo, &regimen_plan) {
                rx["basedOn"] = arr![reference("CarePlan", cp_id)];
            }
            out.push_back(rx);
            if !t.given {
                continue;
            }
            // Doses already given: every scheduled time up to now.
            let days = if t.chemo { 1 } else { STAY_DAYS };
            for d in day..day + days {
                for time in m.times {
                    let (h, mm) = time.split_once(':').expect("hh:mm");
                    let at = d * 1440 + h.parse::<i64>().expect("hour") * 60 + mm.parse::<i64>().expect("minute");
                    if at >= 0 {
                        continue;
                    }
                    n.administrations += 1;
                    out.push_back(obj! {
                        "resourceType": "MedicationAdministration",
                        "id": nid("medadm", n.administrations),
                        "status": "completed",
                        "medicationCodeableConcept": obj! { "text": m.product },
                        "subject": &subject,
                        "effectiveDateTime": fmt_instant(today, at + rng.range(0, 25)),
                        "performer": arr![obj! { "actor": &prescriber }],
                        "request": reference("MedicationRequest", &rx_id),
                        "dosage": obj! {
                            "route": concept(SNOMED, m.route.0, m.route.1),
                            "dose": dose_quantity(m),
                        },
                    });
                }
            }
        }
    }
}
