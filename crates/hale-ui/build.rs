//! Builds the UI's one stylesheet from the vendored, hash-pinned NHS.UK
//! frontend CSS plus Hale's own rules, and pre-compresses it.
//!
//! Refuses to build if a vendored file does not match `SHA256SUMS`: the copy
//! in the repository is exactly the published package's.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const VENDOR: &str = "vendor/nhsuk-frontend-10.6.1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let vendor = dir.join(VENDOR);
    println!("cargo:rerun-if-changed={VENDOR}");
    println!("cargo:rerun-if-changed=assets/hale.css");
    let sums = std::fs::read_to_string(vendor.join("SHA256SUMS")).expect("vendor SHA256SUMS");
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (want, file) = line.split_once("  ").expect("SHA256SUMS line: '<hex>  <file>'");
        let got = hex(&Sha256::digest(
            std::fs::read(vendor.join(file)).expect("vendored file"),
        ));
        assert_eq!(
            got, want,
            "{VENDOR}/{file} does not match its pinned SHA-256; restore it from nhsuk-frontend@10.6.1"
        );
    }
    let nhs = std::fs::read_to_string(vendor.join("nhsuk-frontend.min.css")).unwrap();
    let css = strip_font_faces(&nhs).replace("url(/assets/images/", "url(/ui/assets/images/");
    assert!(!css.contains("@font-face"), "a font face survived");
    assert!(
        !css.contains("https://"),
        "the stylesheet still names a third-party host"
    );
    let hale = std::fs::read_to_string(dir.join("assets/hale.css")).unwrap();
    let all = format!("{css}\n{hale}");
    write(&out, "ui.css", all.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(all.as_bytes()).unwrap();
    write(&out, "ui.css.gz", &gz.finish().unwrap());
    let tag = &hex(&Sha256::digest(all.as_bytes()))[..12];
    println!("cargo:rustc-env=HALE_UI_CSS_TAG={tag}");
}

fn write(out: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(out.join(name), bytes).unwrap();
}

/// Drop every `@font-face{...}` rule (the minified CSS has no nested braces in them).
fn strip_font_faces(css: &str) -> String {
    let mut out = String::with_capacity(css.len());
    let mut rest = css;
    while let Some(i) = rest.find("@font-face{") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let end = after.find('}').expect("unterminated @font-face");
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}
