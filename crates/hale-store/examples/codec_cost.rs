//! CPU per command of the log encodings: `cargo run --release -p hale-store --example codec_cost`.
//! Encodes and decodes a typical Patient create (the demo board's shape) in
//! the JSON form older releases logged and in the binary form, and prints
//! microseconds per operation and bytes.

use hale_store::codec;
use hale_store::command::{Actor, Command, CommandKind, References, WriteOp};
use std::time::Instant;

fn main() {
    let resource: serde_json::Value = serde_json::from_str(
        r#"{"resourceType":"Patient","id":"0f8e2c1a-5b7d-4e3f-9a1b-2c3d4e5f6a7b","meta":{"profile":["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]},
        "identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9990012345"}],"active":true,
        "name":[{"use":"official","family":"MacDonald","given":["Eilidh","Morag"],"prefix":["Ms"]}],
        "telecom":[{"system":"phone","value":"0141 496 0123","use":"home"},{"system":"email","value":"eilidh@example.org"}],
        "gender":"female","birthDate":"1984-07-19",
        "address":[{"use":"home","line":["12 Byres Road"],"city":"Glasgow","postalCode":"G12 8QQ","country":"GB"}],
        "generalPractitioner":[{"display":"Dr A. Smith"}]}"#,
    )
    .unwrap();
    let cmd = Command {
        time_ms: 1_764_000_000_000,
        actor: Actor {
            user: "clerk.one".into(),
            role: "clerk".into(),
        },
        kind: CommandKind::Write(WriteOp::Create {
            rtype: "Patient".into(),
            id: "0f8e2c1a-5b7d-4e3f-9a1b-2c3d4e5f6a7b".into(),
            resource,
            if_none_exist: None,
        }),
        references: References::Enforce,
    };
    let n = 200_000;
    let json = serde_json::to_vec(&cmd).unwrap();
    let bin = codec::encode(&cmd);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(serde_json::to_vec(std::hint::black_box(&cmd)).unwrap());
    }
    let je = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(serde_json::from_slice::<Command>(std::hint::black_box(&json)).unwrap());
    }
    let jd = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(codec::encode(std::hint::black_box(&cmd)));
    }
    let be = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(codec::decode(std::hint::black_box(&bin)).unwrap());
    }
    let bd = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("| form | bytes | encode µs | decode µs |");
    println!("|---|---|---|---|");
    println!("| JSON (before) | {} | {je:.2} | {jd:.2} |", json.len());
    println!("| binary v1 | {} | {be:.2} | {bd:.2} |", bin.len());
}
