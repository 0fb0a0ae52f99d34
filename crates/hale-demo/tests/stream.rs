//! The streaming API gives exactly the board `generate` gives, byte for byte.

use chrono::NaiveDate;
use hale_demo::{generate, generate_each, sites, stream, DemoConfig};
use serde_json::Value;

fn config(seed: u64, patients: usize, today: (i32, u32, u32)) -> DemoConfig {
    DemoConfig {
        seed,
        patients,
        today: NaiveDate::from_ymd_opt(today.0, today.1, today.2).unwrap(),
    }
}

/// Serialised as NDJSON: one resource per line, as the demo example writes it.
fn ndjson(resources: impl IntoIterator<Item = Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in resources {
        serde_json::to_writer(&mut out, &r).unwrap();
        out.push(b'\n');
    }
    out
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A board as the generator wrote it before it streamed (commit 319e243,
/// which built every resource into one `Vec<Value>`), serialised as NDJSON.
struct Expected {
    seed: u64,
    patients: usize,
    today: (i32, u32, u32),
    resources: usize,
    bytes: usize,
    /// FNV-1a of the NDJSON.
    digest: u64,
}

/// The stream must reproduce these exactly. They are also a determinism
/// guard: a deliberate change to the generated data changes them, and they
/// must then be recomputed.
const BEFORE_STREAMING: &[Expected] = &[
    Expected {
        seed: 2013,
        patients: 300,
        today: (2026, 11, 23),
        resources: 10_243,
        bytes: 7_184_783,
        digest: 0x8386_3391_122a_14a7,
    },
    Expected {
        seed: 7,
        patients: 250,
        today: (2025, 3, 1),
        resources: 9_492,
        bytes: 6_509_337,
        digest: 0xc0d8_7822_bf52_0f76,
    },
    Expected {
        seed: 424_242,
        patients: 400,
        today: (2024, 2, 29),
        resources: 11_599,
        bytes: 8_618_439,
        digest: 0x24b8_01de_5111_fdc2,
    },
    Expected {
        seed: 99,
        patients: 3,
        today: (2030, 12, 31),
        resources: 6_327,
        bytes: 3_140_811,
        digest: 0x28a7_802e_fed4_582f,
    },
    Expected {
        seed: 1,
        patients: 0,
        today: (2026, 1, 1),
        resources: 6_292,
        bytes: 3_100_013,
        digest: 0x80d5_91b2_38df_92f9,
    },
];

/// The types the rest of the record added (after the boards above were
/// recorded), and the field it added to Appointments.
const RECORD_TYPES: &[&str] = &[
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "Flag",
    "Immunization",
    "Procedure",
    "ServiceRequest",
    "CarePlan",
];

/// Without the rest of the record (its own PRNG streams), every older
/// resource is exactly what the generator wrote before it streamed.
#[test]
fn stream_reproduces_the_board_generated_before_streaming() {
    for e in BEFORE_STREAMING {
        let cfg = config(e.seed, e.patients, e.today);
        let mut n = 0;
        let older = stream(&cfg)
            .filter(|r| !RECORD_TYPES.contains(&r["resourceType"].as_str().unwrap()))
            .map(|mut r| {
                if let Some(m) = r.as_object_mut() {
                    m.shift_remove("basedOn");
                }
                r
            });
        let text = ndjson(older.inspect(|_| n += 1));
        assert_eq!(
            (n, text.len(), fnv1a(&text)),
            (e.resources, e.bytes, e.digest),
            "{cfg:?}: the stream differs from the board generated before streaming"
        );
    }
}

#[test]
fn stream_generate_each_and_generate_agree_byte_for_byte() {
    for cfg in [config(2013, 300, (2026, 11, 23)), config(7, 250, (2025, 3, 1))] {
        let board = generate(&cfg);
        let from_stream = stream(&cfg);
        assert_eq!(from_stream.sites(), board.sites.as_slice());
        assert_eq!(sites(&cfg), board.sites);
        let streamed = ndjson(from_stream);
        let mut each = Vec::new();
        generate_each(&cfg, |r| each.push(r));
        let each = ndjson(each);
        let collected = ndjson(board.resources.iter().cloned());
        assert_eq!(streamed.len(), collected.len(), "{cfg:?}");
        // Compare line by line first for a readable failure.
        for (i, (a, b)) in streamed
            .split(|&b| b == b'\n')
            .zip(collected.split(|&b| b == b'\n'))
            .enumerate()
        {
            assert!(
                a == b,
                "{cfg:?}: resource {i} differs:\nstream   {}\ngenerate {}",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            );
        }
        assert!(streamed == collected, "{cfg:?}");
        assert!(each == collected, "{cfg:?}");
    }
}

#[test]
fn stream_ends_and_stays_ended() {
    let mut s = stream(&config(3, 5, (2026, 11, 23)));
    let n = s.by_ref().count();
    assert_eq!(n, generate(&config(3, 5, (2026, 11, 23))).resources.len());
    assert!(s.next().is_none());
    assert!(s.next().is_none());
}

#[test]
fn stream_can_be_held_across_await_points() {
    // The server loads the board from a spawned task, holding the stream
    // while it awaits each batch.
    fn assert_send<T: Send + 'static>(_: &T) {}
    assert_send(&stream(&config(1, 1, (2026, 11, 23))));
}

#[test]
#[should_panic(expected = "patients are supported")]
fn stream_refuses_too_many_patients() {
    let _ = stream(&config(1, hale_demo::MAX_PATIENTS + 1, (2026, 11, 23)));
}
