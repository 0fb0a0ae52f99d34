//! A demo-board store shared by the tests of one binary, and helpers to read
//! packs back (age decryption, `pdftotext`).

#![allow(dead_code)]

use chrono::NaiveDate;
use hale_store::command::Command;
use hale_store::{Actor, CommandKind, StateMachine, WriteOp};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The board's "today": a Monday, in GMT.
pub const TODAY: (i32, u32, u32) = (2026, 11, 23);
/// Generation time: 07:00 on TODAY.
pub const NOW: &str = "2026-11-23T07:00:00Z";
pub const PATIENTS: usize = 800;
pub const SEED: u64 = 2013;
/// Ops per batch command while loading.
const LOAD_BATCH_OPS: usize = 500;

pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(TODAY.0, TODAY.1, TODAY.2).unwrap()
}

pub fn ms(instant: &str) -> i64 {
    hale_fhir::date::parse_range_ms(instant).expect("instant").0
}

pub fn now_ms() -> i64 {
    ms(NOW)
}

/// Load `resources` into a new store in `dir` through `StateMachine::apply`.
pub fn load(dir: &Path, resources: impl IntoIterator<Item = Value>) {
    let mut sm = StateMachine::open(dir).expect("open store");
    let mut ops = Vec::with_capacity(LOAD_BATCH_OPS);
    let mut index = sm.last_applied();
    let mut flush = |ops: Vec<WriteOp>, sm: &mut StateMachine| {
        if ops.is_empty() {
            return;
        }
        index += 1;
        let cmd = Command {
            references: Default::default(),
            time_ms: now_ms() - 86_400_000,
            actor: Actor {
                user: "demo-loader".into(),
                role: "service".into(),
            },
            kind: CommandKind::Batch(ops),
        };
        let applied = sm.apply(&[(index, &cmd)]).expect("apply");
        if let hale_store::apply::Applied::Ops(results) = &applied[0] {
            for r in results {
                if let Err(rej) = r {
                    panic!("demo resource refused: {rej:?}");
                }
            }
        }
    };
    for r in resources {
        let rtype = r["resourceType"].as_str().unwrap().to_string();
        let id = r["id"].as_str().unwrap().to_string();
        ops.push(WriteOp::Update {
            rtype,
            id,
            resource: r,
            if_match: None,
        });
        if ops.len() == LOAD_BATCH_OPS {
            flush(std::mem::take(&mut ops), &mut sm);
        }
    }
    flush(ops, &mut sm);
}

pub struct DemoStore {
    pub dir: PathBuf,
    pub board: hale_demo::Board,
}

/// The demo board with [`PATIENTS`] patients, loaded once per test binary.
pub fn demo_store() -> &'static DemoStore {
    static STORE: OnceLock<DemoStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let board = hale_demo::generate(&hale_demo::DemoConfig {
            seed: SEED,
            patients: PATIENTS,
            today: today(),
        });
        load(&dir, board.resources.iter().cloned());
        DemoStore { dir, board }
    })
}

pub fn open_reader(dir: &Path) -> hale_store::rusqlite::Connection {
    hale_store::rusqlite::Connection::open_with_flags(
        dir.join(hale_store::DB_FILE),
        hale_store::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open read-only connection")
}

pub fn decrypt(identity: &age::x25519::Identity, ciphertext: &[u8]) -> Vec<u8> {
    let d = age::Decryptor::new(ciphertext).expect("an age file");
    let mut out = Vec::new();
    d.decrypt(std::iter::once(identity as &dyn age::Identity))
        .expect("decrypts with the test identity")
        .read_to_end(&mut out)
        .expect("read plaintext");
    out
}

fn require_tool(name: &str) {
    let found = std::process::Command::new(name).arg("-v").output().is_ok();
    assert!(
        found,
        "`{name}` is missing: these tests read the PDFs with poppler-utils (apt-get install -y poppler-utils)"
    );
}

/// The text of a PDF, page by page, from `pdftotext -layout`.
pub fn pdf_pages(pdf: &[u8]) -> Vec<String> {
    require_tool("pdftotext");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args(["-layout", "-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .expect("run pdftotext");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "pdftotext failed or found the PDF malformed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 text");
    let mut pages: Vec<String> = text.split('\u{c}').map(str::to_string).collect();
    if pages.last().is_some_and(|p| p.trim().is_empty()) {
        pages.pop();
    }
    pages
}

/// Render page `page` (1-based) of a PDF to `png` with `pdftoppm`.
pub fn render_png(pdf: &[u8], page: usize, png: &Path) {
    require_tool("pdftoppm");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.pdf");
    std::fs::write(&path, pdf).unwrap();
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let stem = png.with_extension("");
    let out = std::process::Command::new("pdftoppm")
        .args([
            "-png",
            "-r",
            "110",
            "-singlefile",
            "-f",
            &page.to_string(),
            "-l",
            &page.to_string(),
        ])
        .arg(&path)
        .arg(&stem)
        .output()
        .expect("run pdftoppm");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "pdftoppm failed or found the PDF malformed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(png.exists(), "pdftoppm wrote no {}", png.display());
}

/// `<workspace>/target/`: where reviewers find the rendered pages.
pub fn review_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/<name> inside the workspace")
        .join("target")
}
