//! Synthetic data: a tiny PRNG, UK-style names, FHIR resource bodies, times.

use bytes::Bytes;
use serde_json::json;

/// SplitMix64: fast, good enough for picking names and ids.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A run-specific seed from the clock and the process id.
pub(crate) fn run_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut r = Rng::new(nanos ^ (u64::from(std::process::id()) << 32));
    r.next_u64()
}

/// 200 common surnames in England and Wales (plain ASCII letters only, so they
/// need no escaping in a query string). Seeded patients draw from this pool,
/// so a `family=` search matches roughly seed_patients / 200 patients.
pub(crate) const SURNAMES: [&str; 200] = [
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Adams",
    "Singh",
    "Begum",
    "Wilkinson",
    "Foster",
    "Chapman",
    "Powell",
    "Webb",
    "Rogers",
    "Gray",
    "Mason",
    "Ali",
    "Hunt",
    "Hussain",
    "Campbell",
    "Matthews",
    "Owen",
    "Palmer",
    "Holmes",
    "Mills",
    "Barnes",
    "Knight",
    "Lloyd",
    "Butler",
    "Russell",
    "Barker",
    "Fisher",
    "Stevens",
    "Jenkins",
    "Murray",
    "Dixon",
    "Harvey",
    "Graham",
    "Pearson",
    "Ahmed",
    "Fletcher",
    "Walsh",
    "Kaur",
    "Gibson",
    "Howard",
    "Andrews",
    "Stewart",
    "Elliott",
    "Reynolds",
    "Saunders",
    "Payne",
    "Fox",
    "Ford",
    "Pearce",
    "Brooks",
    "Lawrence",
    "Cole",
    "Atkinson",
    "Bradley",
    "Spencer",
    "Gill",
    "Dawson",
    "Ball",
    "Burton",
    "Watts",
    "Rose",
    "Booth",
    "Perry",
    "Ryan",
    "Grant",
    "Wells",
    "Armstrong",
    "Francis",
    "Rees",
    "Hayes",
    "Hart",
    "Hudson",
    "Newman",
    "Barrett",
    "Webster",
    "Hunter",
    "Gregory",
    "Carr",
    "Lowe",
    "Page",
    "Marsh",
    "Riley",
    "Dunn",
    "Woods",
    "Parsons",
    "Berry",
    "Stone",
    "Reid",
    "Holland",
    "Hawkins",
    "Harding",
    "Porter",
    "Robertson",
    "Newton",
    "Oliver",
    "Reed",
    "Kennedy",
    "Williamson",
    "Bird",
    "Gardner",
    "Shah",
    "Dean",
    "Cooke",
    "Bates",
    "Henderson",
    "Parry",
    "Burgess",
    "Bishop",
    "Walton",
    "Burns",
    "Nicholson",
    "Shepherd",
    "Ross",
    "Freeman",
    "Warren",
    "Nicholls",
    "Hamilton",
    "Byrne",
    "Sutton",
    "McDonald",
    "Yates",
    "Hodgson",
    "Robson",
    "Curtis",
    "Hopkins",
    "OBrien",
    "Kim",
    "Nguyen",
    "Okafor",
    "Kowalski",
    "Mensah",
    "Rahman",
];

pub(crate) const GIVEN_FEMALE: [&str; 40] = [
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Ivy",
    "Lily",
    "Isabella",
    "Rosie",
    "Sophia",
    "Grace",
    "Freya",
    "Willow",
    "Florence",
    "Emily",
    "Ella",
    "Poppy",
    "Evie",
    "Elsie",
    "Charlotte",
    "Margaret",
    "Susan",
    "Patricia",
    "Elizabeth",
    "Sarah",
    "Helen",
    "Karen",
    "Janet",
    "Jean",
    "Mary",
    "Aisha",
    "Fatima",
    "Priya",
    "Zara",
    "Siobhan",
    "Niamh",
    "Catrin",
    "Eilidh",
    "Joan",
    "Dorothy",
];

pub(crate) const GIVEN_MALE: [&str; 40] = [
    "Noah", "Oliver", "George", "Arthur", "Muhammad", "Leo", "Harry", "Oscar", "Archie", "Henry", "Theodore",
    "Freddie", "Jack", "Charlie", "Thomas", "William", "Alfie", "James", "Jacob", "Joshua", "David", "John", "Paul",
    "Andrew", "Mark", "Richard", "Peter", "Michael", "Stephen", "Robert", "Ibrahim", "Arjun", "Kwame", "Rhys", "Dylan",
    "Callum", "Angus", "Ciaran", "Brian", "Kenneth",
];

pub(crate) const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A Patient with one NHS number, an official UK-style name, gender and
/// birth date.
pub(crate) fn patient_body(rng: &mut Rng, nhs: &str, family: &str) -> Bytes {
    let female = rng.below(2) == 0;
    let given = if female {
        rng.pick(&GIVEN_FEMALE)
    } else {
        rng.pick(&GIVEN_MALE)
    };
    let year = 1930 + rng.below(93);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    let body = json!({
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("{year:04}-{month:02}-{day:02}"),
    });
    Bytes::from(body.to_string())
}

pub(crate) fn location_body() -> Bytes {
    Bytes::from(json!({"resourceType": "Location", "name": "Bench clinic"}).to_string())
}

pub(crate) fn schedule_body(location_id: &str) -> Bytes {
    Bytes::from(
        json!({
            "resourceType": "Schedule",
            "actor": [{"reference": format!("Location/{location_id}")}],
        })
        .to_string(),
    )
}

pub(crate) fn slot_body(schedule_id: &str, start: &str, end: &str) -> Bytes {
    Bytes::from(
        json!({
            "resourceType": "Slot",
            "schedule": {"reference": format!("Schedule/{schedule_id}")},
            "status": "free",
            "start": start,
            "end": end,
        })
        .to_string(),
    )
}

pub(crate) const APPOINTMENT_CATEGORY_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/appointment-category";

pub(crate) fn appointment_body(slot_id: &str, start: &str, end: &str, patient_id: &str) -> Bytes {
    Bytes::from(
        json!({
            "resourceType": "Appointment",
            "status": "booked",
            "serviceCategory": [{"coding": [{
                "system": APPOINTMENT_CATEGORY_SYSTEM,
                "code": "outpatient",
            }]}],
            "priority": 4,
            "start": start,
            "end": end,
            "slot": [{"reference": format!("Slot/{slot_id}")}],
            "participant": [{
                "actor": {"reference": format!("Patient/{patient_id}")},
                "status": "accepted",
            }],
        })
        .to_string(),
    )
}

/// 2030-01-01T00:00:00Z as Unix seconds.
pub(crate) const SLOTS_EPOCH_S: i64 = 1_893_456_000;

/// RFC 3339 UTC timestamp ("2030-01-01T09:00:00Z") for Unix seconds.
pub(crate) fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Does `haystack` contain `needle`? (Cheap check on response bodies.)
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn surname_pool_is_unique_plain_ascii() {
        let set: HashSet<&str> = SURNAMES.iter().copied().collect();
        assert_eq!(set.len(), SURNAMES.len());
        for s in SURNAMES.iter().chain(&GIVEN_FEMALE).chain(&GIVEN_MALE) {
            assert!(s.bytes().all(|b| b.is_ascii_alphabetic()), "{s}");
        }
    }

    #[test]
    fn format_utc_cases() {
        fn check(secs: i64, expected: &str) {
            assert_eq!(format_utc(secs), expected, "{secs}");
        }
        check(0, "1970-01-01T00:00:00Z");
        check(SLOTS_EPOCH_S, "2030-01-01T00:00:00Z");
        check(SLOTS_EPOCH_S + 9 * 3600 + 15 * 60, "2030-01-01T09:15:00Z");
        check(951_782_400, "2000-02-29T00:00:00Z");
        check(1_709_251_199, "2024-02-29T23:59:59Z");
        check(4_102_444_800, "2100-01-01T00:00:00Z");
    }

    #[test]
    fn rng_below_stays_in_range_and_spreads() {
        let mut r = Rng::new(42);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[r.below(10)] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }

    #[test]
    fn patient_body_is_a_patient_with_the_nhs_number() {
        let mut r = Rng::new(1);
        let body = patient_body(&mut r, "9990000018", "Smith");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["resourceType"], "Patient");
        assert_eq!(v["identifier"][0]["system"], NHS_NUMBER_SYSTEM);
        assert_eq!(v["identifier"][0]["value"], "9990000018");
        assert_eq!(v["name"][0]["family"], "Smith");
    }

    #[test]
    fn contains_cases() {
        assert!(contains(b"abc9990000018def", b"9990000018"));
        assert!(!contains(b"abc", b"abcd"));
        assert!(contains(b"abc", b""));
    }
}
