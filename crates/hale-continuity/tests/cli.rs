//! `hale downtime-pack` lives in the `hale` binary (crates/hale/src/downtime.rs);
//! it is compiled and exercised here too, so that the CLI half is checked by
//! this crate's tests.

mod common;

#[path = "../../hale/src/downtime.rs"]
mod downtime;

use clap::Parser;
use downtime::DowntimePackArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: DowntimePackArgs,
}

fn parse(args: &[&str]) -> Result<DowntimePackArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("downtime-pack").chain(args.iter().copied())).map(|c| c.args)
}

#[test]
fn arguments() {
    let a = parse(&[
        "--site",
        "QEH",
        "--out",
        "/tmp/x",
        "--recipient",
        "age1a",
        "--recipient",
        "age1b",
    ])
    .unwrap();
    assert_eq!(a.site, "QEH");
    assert_eq!(a.days, hale_continuity::DAYS_DEFAULT);
    assert_eq!(a.recipients, vec!["age1a", "age1b"]);
    assert!(!a.insecure_plaintext && !a.utc);
    assert_eq!(a.keep, 5);
    let a = parse(&[
        "--site",
        "QEH",
        "--out",
        "/tmp/x",
        "--insecure-plaintext",
        "--days",
        "5",
    ])
    .unwrap();
    assert!(a.insecure_plaintext);
    assert_eq!(a.days, 5);
    assert!(parse(&["--out", "/tmp/x"]).is_err(), "--site is required");
    assert!(
        parse(&[
            "--site",
            "Q",
            "--out",
            "/x",
            "--recipient",
            "age1a",
            "--insecure-plaintext"
        ])
        .is_err(),
        "recipients and --insecure-plaintext exclude each other"
    );
}

#[test]
fn refuses_to_write_plaintext_unless_asked() {
    let store = common::demo_store();
    let out = tempfile::tempdir().unwrap();
    let data = store.dir.to_str().unwrap();
    let outp = out.path().to_str().unwrap();
    let err = downtime::run(parse(&["--site", "SRI", "--out", outp, "--data", data]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("--insecure-plaintext"), "{err}");
    assert!(
        hale_continuity::current_pack(out.path()).unwrap().is_none(),
        "nothing written"
    );
}

#[test]
fn writes_an_encrypted_pack() {
    let store = common::demo_store();
    let out = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let key = id.to_public().to_string();
    let args = parse(&[
        "--site",
        "KGH",
        "--days",
        "1",
        "--out",
        out.path().to_str().unwrap(),
        "--data",
        store.dir.to_str().unwrap(),
        "--recipient",
        &key,
    ])
    .unwrap();
    downtime::run(args).unwrap();
    let current = hale_continuity::current_pack(out.path()).unwrap().expect("a pack");
    let m = hale_continuity::verify_pack(&current.dir).unwrap();
    assert_eq!(m.site, "KGH");
    assert_eq!(m.recipients, vec![key]);
    let pdf = std::fs::read(current.dir.join("clinic-list.pdf.age")).unwrap();
    assert!(common::decrypt(&id, &pdf).starts_with(b"%PDF"));
}
