//! The letter PDF, read back with poppler's `pdftotext` / `pdfinfo` (installed
//! by .ci/run): its text, its page size, and that its layout fits GOV.UK
//! Notify's letter specification (address window, margins, NOTIFY tag area).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use hale_notify::{render_letter, Channel, PostalAddress};
use hale_sched::letters::Postage;

fn tool(name: &str) {
    let ok = Command::new(name).arg("-v").output().is_ok();
    assert!(
        ok,
        "`{name}` (poppler-utils) is not installed; .ci/run installs it (apt-get install poppler-utils)"
    );
}

fn run(cmd: &str, args: &[&str]) -> String {
    tool(cmd);
    let out = Command::new(cmd).args(args).output().expect("run poppler tool");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn write(dir: &Path, name: &str, pdf: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pdf).unwrap();
    p.to_string_lossy().into_owned()
}

/// A word and its box, in points from the top left (pdftotext -bbox).
#[derive(Debug)]
struct Word {
    text: String,
    x_min: f32,
    y_min: f32,
    x_max: f32,
    y_max: f32,
}

fn attr(tag: &str, name: &str) -> f32 {
    let key = format!("{name}=\"");
    let at = tag.find(&key).expect("attribute") + key.len();
    tag[at..at + tag[at..].find('"').unwrap()].parse().unwrap()
}

fn words(path: &str) -> Vec<Word> {
    let html = run("pdftotext", &["-bbox", path, "-"]);
    html.split("<word ")
        .skip(1)
        .map(|w| {
            let (tag, rest) = w.split_once('>').unwrap();
            Word {
                text: rest.split("</word>").next().unwrap().to_string(),
                x_min: attr(tag, "xMin"),
                y_min: attr(tag, "yMin"),
                x_max: attr(tag, "xMax"),
                y_max: attr(tag, "yMax"),
            }
        })
        .collect()
}

fn mm(pt: f32) -> f32 {
    pt * 25.4 / 72.0
}

#[test]
fn letter_reads_back_with_the_new_and_old_times() {
    let dir = tempfile::tempdir().unwrap();
    let it = item(
        "comm-letter-1",
        Channel::Letter {
            postage: Postage::Second,
        },
    );
    let pdf = render_letter(&it, &sender(), uk("2026-10-05", 11, 0));
    assert!(pdf.starts_with(b"%PDF-1.4"));
    assert_eq!(
        pdf,
        render_letter(&it, &sender(), uk("2026-10-05", 11, 0)),
        "deterministic"
    );
    let path = write(dir.path(), "letter.pdf", &pdf);

    let info = run("pdfinfo", &[&path]);
    assert!(
        info.lines().any(|l| l.starts_with("Pages:") && l.ends_with(" 1")),
        "{info}"
    );
    assert!(info.contains("595.28 x 841.89 pts (A4)"), "{info}");
    assert!(info.contains("Hale patient letter"), "{info}");

    let text = squash(&run("pdftotext", &["-layout", &path, "-"]));
    for want in [
        "Your appointment has been rearranged",
        "Dear Ada Okafor,",
        "Your new appointment",
        NEW_TIME,
        "Cardiology outpatient clinic",
        "Outpatients B, Royal Infirmary",
        "Dr Priya Rao",
        OLD_TIME,
        "because of an IT failure at the hospital",
        "0141 496 0000",
        "Hale General Hospital",
        "NHS number: 999 123 4567",
        "comm-letter-1",
        "5 October 2026",
        "14 Hyndland Road",
        "G12 9UX",
    ] {
        assert!(text.contains(want), "letter text lacks {want:?}:\n{text}");
    }
    // The UK is not printed as a country line.
    assert!(!text.contains("United Kingdom"), "{text}");
}

#[test]
fn layout_fits_notifys_letter_specification() {
    let dir = tempfile::tempdir().unwrap();
    let mut it = item(
        "comm-letter-2",
        Channel::Letter {
            postage: Postage::First,
        },
    );
    // A long name and a seven-line address, with letters outside Latin-1.
    it.recipient.name = "Zoë Brontë-Wąsik Łukaszewicz-Featherstonehaugh".into();
    it.recipient.address = Some(PostalAddress {
        line: vec![
            "Flat 14/2, The Very Long Building Name Residences".into(),
            "1234 Great Western Road".into(),
            "Kelvinside".into(),
            "Hillhead".into(),
            "West End".into(),
        ],
        city: Some("Glasgow".into()),
        district: Some("Lanarkshire".into()),
        postal_code: Some("G12 0AA".into()),
        country: None,
    });
    let pdf = render_letter(&it, &sender(), uk("2026-10-05", 11, 0));
    let path = write(dir.path(), "letter.pdf", &pdf);
    let ws = words(&path);
    assert!(ws.len() > 100, "{} words", ws.len());

    let text = squash(&run("pdftotext", &[&path, "-"]));
    assert!(
        text.contains("Zoë Brontë-Wasik Lukaszewicz-Featherstonehaugh"),
        "{text}"
    );

    for w in &ws {
        // NOTIFY tag area (top left, 15.2 mm x 6.2 mm) is blank.
        assert!(
            !(mm(w.x_min) < 15.2 && mm(w.y_min) < 6.2),
            "{w:?} in the NOTIFY tag area"
        );
        // Inside the printable area: 15 mm side margins, 5 mm top and bottom.
        assert!(
            mm(w.x_min) >= 15.0 && mm(w.x_max) <= 195.0,
            "{w:?} outside the side margins"
        );
        assert!(
            mm(w.y_min) >= 5.0 && mm(w.y_max) <= 292.0,
            "{w:?} outside top/bottom margins"
        );
    }
    // The address: the words between the name and the postcode sit in the window.
    let first = ws.iter().position(|w| w.text == "Zoë").expect("name in address");
    let last = ws.iter().position(|w| w.text == "0AA").expect("postcode");
    assert!(first < last);
    for w in &ws[first..=last] {
        assert!(
            mm(w.x_min) >= 24.6 && mm(w.x_max) <= 120.0,
            "address word {w:?} outside the window horizontally"
        );
        assert!(
            mm(w.y_min) >= 40.0 && mm(w.y_max) <= 66.2,
            "address word {w:?} outside the window vertically ({:.1}..{:.1} mm)",
            mm(w.y_min),
            mm(w.y_max)
        );
    }
    // The body starts below the address area.
    let heading = ws.iter().find(|w| w.text == "rearranged").expect("heading");
    assert!(mm(heading.y_min) > 95.0, "{heading:?}");
    // The sender's block is right of 125 mm.
    let org = ws.iter().find(|w| w.text == "Square").expect("return address");
    assert!(mm(org.x_min) >= 125.0, "{org:?}");
}
