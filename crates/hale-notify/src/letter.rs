//! Patient letters as PDF, and an adapter that writes them to a directory for
//! printing (a print room, or a hybrid-mail service that collects files).
//!
//! The layout follows GOV.UK Notify's letter specification so the same PDF
//! can go to Notify as a precompiled letter: A4 portrait; nothing in the
//! top-left "NOTIFY" tag area; the recipient's address inside the address
//! window (24.6 mm to 120 mm from the left, 40 mm to 66.2 mm from the top);
//! the sender's block right of 125 mm; the body from 95 mm down, inside the
//! 15 mm side margins and 5 mm top and bottom margins. Text uses the PDF
//! standard fonts (Helvetica), written by `hale_continuity::pdf`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hale_continuity::pdf::{text_width_pt, win_ansi, write_pdf_with_producer, DocInfo, Font, Op, Orientation, Page};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::message::{uk_date, uk_datetime, what_happened, Sender};
use crate::model::{Channel, OutboxItem, Receipt};
use crate::outbox::{Adapter, BoxFuture, Check, SendError};

/// Millimetres to points.
fn mm(v: f32) -> f32 {
    v * 72.0 / 25.4
}

const PAGE_H: f32 = hale_continuity::pdf::A4_LONG_PT;

/// Layout, in mm from the left and from the top of the page.
pub mod layout {
    pub const BODY_LEFT_MM: f32 = 20.0;
    pub const BODY_RIGHT_MM: f32 = 190.0;
    pub const BODY_TOP_MM: f32 = 100.0;
    /// Continuation pages start here.
    pub const BODY_TOP_NEXT_MM: f32 = 20.0;
    /// Body text stops above this (leaving the footer line).
    pub const BODY_BOTTOM_MM: f32 = 275.0;
    pub const FOOTER_MM: f32 = 285.0;
    pub const ADDRESS_LEFT_MM: f32 = 24.6;
    pub const ADDRESS_RIGHT_MM: f32 = 120.0;
    pub const ADDRESS_TOP_MM: f32 = 40.0;
    pub const ADDRESS_BOTTOM_MM: f32 = 66.2;
    pub const SENDER_LEFT_MM: f32 = 125.0;
    pub const SENDER_RIGHT_MM: f32 = 195.0;
    pub const SENDER_TOP_MM: f32 = 10.0;
    pub const SENDER_BOTTOM_MM: f32 = 92.0;
}
use layout::*;

const ADDRESS_SIZE: f32 = 9.5;
const ADDRESS_LEADING: f32 = 10.5;
const BODY_SIZE: f32 = 11.0;
const BODY_LEADING: f32 = 15.0;

/// Text laid out top to bottom, breaking pages when needed.
struct Writer {
    pages: Vec<Page>,
    /// Baseline of the next line, in points from the top.
    y_top_pt: f32,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            pages: vec![Page::default()],
            y_top_pt: mm(BODY_TOP_MM),
        }
    }

    fn page(&mut self) -> &mut Page {
        self.pages.last_mut().expect("at least one page")
    }

    fn text_at(&mut self, x_mm: f32, y_top_pt: f32, font: Font, size: f32, s: &str) {
        let bytes = win_ansi(s);
        self.page().ops.push(Op::Text {
            x: mm(x_mm),
            y: PAGE_H - y_top_pt,
            font,
            size_pt: size,
            bytes,
        });
    }

    /// Makes room for `height_pt` more, starting a new page if needed.
    fn need(&mut self, height_pt: f32) {
        if self.y_top_pt + height_pt > mm(BODY_BOTTOM_MM) {
            self.pages.push(Page::default());
            self.y_top_pt = mm(BODY_TOP_NEXT_MM);
        }
    }

    /// A paragraph wrapped to `[left_mm, BODY_RIGHT_MM]`.
    fn paragraph(&mut self, left_mm: f32, font: Font, size: f32, leading: f32, s: &str) {
        for line in wrap(s, font, size, mm(BODY_RIGHT_MM - left_mm)) {
            self.need(leading);
            self.y_top_pt += leading;
            let y = self.y_top_pt;
            self.text_at(left_mm, y, font, size, &line);
        }
    }

    fn gap(&mut self, pt: f32) {
        self.y_top_pt += pt;
    }
}

/// Greedy word wrap by measured width.
fn wrap(s: &str, font: Font, size: f32, width_pt: f32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if line.is_empty() || text_width_pt(&win_ansi(&candidate), font, size) <= width_pt {
            line = candidate;
        } else {
            lines.push(std::mem::take(&mut line));
            line = word.to_string();
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// A font size at most `size` at which every line fits `width_pt`.
fn fit(lines: &[String], font: Font, size: f32, width_pt: f32) -> f32 {
    let widest = lines
        .iter()
        .map(|l| text_width_pt(&win_ansi(l), font, size))
        .fold(0.0f32, f32::max);
    if widest <= width_pt {
        size
    } else {
        (size * width_pt / widest).max(5.0)
    }
}

/// The letter for `item`, dated `date_ms` (UK local date), as PDF bytes.
/// Deterministic: the same inputs give the same bytes.
pub fn render_letter(item: &OutboxItem, sender: &Sender, date_ms: i64) -> Vec<u8> {
    let a = &item.appointment;
    let r = &item.recipient;
    let mut w = Writer::new();

    // Sender block, top right.
    let sender_width = mm(SENDER_RIGHT_MM - SENDER_LEFT_MM);
    let mut block: Vec<(Font, String)> = vec![(Font::Bold, sender.organisation.clone())];
    block.extend(sender.return_address.iter().map(|l| (Font::Regular, l.clone())));
    block.push((Font::Regular, format!("Phone: {}", sender.phone)));
    block.push((Font::Regular, String::new()));
    block.push((Font::Regular, uk_date(date_ms)));
    let max_lines = ((mm(SENDER_BOTTOM_MM - SENDER_TOP_MM) - 4.0) / 12.0) as usize;
    let mut y = mm(SENDER_TOP_MM) + 9.0;
    for (font, line) in block.into_iter().take(max_lines) {
        let size = fit(std::slice::from_ref(&line), font, 10.0, sender_width);
        w.text_at(SENDER_LEFT_MM, y, font, size, &line);
        y += 12.0;
    }

    // Recipient's address in the window.
    let lines = r
        .address
        .as_ref()
        .map(|ad| ad.envelope_lines(&r.name))
        .unwrap_or_else(|| vec![r.name.clone()]);
    let size = fit(
        &lines,
        Font::Regular,
        ADDRESS_SIZE,
        mm(ADDRESS_RIGHT_MM - ADDRESS_LEFT_MM - 2.0),
    );
    // First baseline so that capitals start just inside the window's top edge.
    let mut y = mm(ADDRESS_TOP_MM + 0.8) + 0.72 * size;
    for line in &lines {
        w.text_at(ADDRESS_LEFT_MM + 1.0, y, Font::Regular, size, line);
        y += ADDRESS_LEADING * size / ADDRESS_SIZE;
    }

    // Body.
    let mut refs = Vec::new();
    if let Some(nhs) = r.nhs_number.as_deref().filter(|s| !s.trim().is_empty()) {
        refs.push(format!("NHS number: {}", nhs.trim()));
    }
    refs.push(format!("Our reference: {}", item.id));
    w.paragraph(BODY_LEFT_MM, Font::Regular, 9.0, 12.0, &refs.join("   |   "));
    w.gap(12.0);
    w.paragraph(
        BODY_LEFT_MM,
        Font::Bold,
        16.0,
        20.0,
        "Your appointment has been rearranged",
    );
    w.gap(8.0);
    w.paragraph(
        BODY_LEFT_MM,
        Font::Regular,
        BODY_SIZE,
        BODY_LEADING,
        &format!("Dear {},", r.name.trim()),
    );
    w.gap(6.0);
    w.paragraph(
        BODY_LEFT_MM,
        Font::Regular,
        BODY_SIZE,
        BODY_LEADING,
        &what_happened(item),
    );
    w.gap(10.0);

    // The new appointment, in a shaded box.
    let mut rows: Vec<(&str, String)> = vec![
        ("When", uk_datetime(a.start_ms)),
        ("Clinic", a.service.clone()),
        ("Where", a.location.clone()),
    ];
    if let Some(p) = a.practitioner.as_deref().filter(|p| !p.trim().is_empty()) {
        rows.push(("With", p.trim().to_string()));
    }
    let label_w = 22.0;
    let value_left = BODY_LEFT_MM + 4.0 + label_w;
    let wrapped: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, value)| {
            let font = if *label == "When" { Font::Bold } else { Font::Regular };
            (*label, wrap(value, font, 12.0, mm(BODY_RIGHT_MM - 4.0 - value_left)))
        })
        .collect();
    let box_lines = 1 + wrapped.iter().map(|(_, l)| l.len().max(1)).sum::<usize>();
    let box_h = box_lines as f32 * 17.0 + 14.0;
    w.need(box_h);
    let top = w.y_top_pt;
    w.page().ops.push(Op::Fill {
        x: mm(BODY_LEFT_MM),
        y: PAGE_H - top - box_h,
        w: mm(BODY_RIGHT_MM - BODY_LEFT_MM),
        h: box_h,
        gray: 0.92,
    });
    w.page().ops.push(Op::Line {
        x1: mm(BODY_LEFT_MM),
        y1: PAGE_H - top,
        x2: mm(BODY_LEFT_MM),
        y2: PAGE_H - top - box_h,
        width_pt: 3.0,
    });
    let mut y = top + 6.0 + 14.0;
    w.text_at(BODY_LEFT_MM + 4.0, y, Font::Bold, 13.0, "Your new appointment");
    for (label, lines) in &wrapped {
        y += 17.0;
        w.text_at(BODY_LEFT_MM + 4.0, y, Font::Bold, 12.0, &format!("{label}:"));
        let font = if *label == "When" { Font::Bold } else { Font::Regular };
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                y += 17.0;
            }
            w.text_at(value_left, y, font, 12.0, line);
        }
    }
    w.y_top_pt = top + box_h;
    w.gap(10.0);

    if let Some(prev) = a.previous_start_ms {
        w.paragraph(
            BODY_LEFT_MM,
            Font::Regular,
            BODY_SIZE,
            BODY_LEADING,
            &format!(
                "This replaces your appointment on {}, which has been cancelled. Please do not come at that time.",
                uk_datetime(prev)
            ),
        );
        w.gap(6.0);
    }
    w.paragraph(
        BODY_LEFT_MM,
        Font::Regular,
        BODY_SIZE,
        BODY_LEADING,
        &format!(
            "If you cannot attend, or this time does not suit you, please call us on {} as soon as you can. \
             We can then give the appointment to someone else and arrange another time for you.",
            sender.phone
        ),
    );
    w.gap(10.0);
    w.paragraph(BODY_LEFT_MM, Font::Regular, BODY_SIZE, BODY_LEADING, "Yours sincerely,");
    w.gap(4.0);
    w.paragraph(
        BODY_LEFT_MM,
        Font::Regular,
        BODY_SIZE,
        BODY_LEADING,
        &sender.organisation,
    );

    // Footer on every page.
    let n = w.pages.len();
    for i in 0..n {
        let text = format!("Reference {}   Page {} of {}", item.id, i + 1, n);
        w.pages[i].ops.push(Op::Text {
            x: mm(BODY_LEFT_MM),
            y: PAGE_H - mm(FOOTER_MM),
            font: Font::Regular,
            size_pt: 8.0,
            bytes: win_ansi(&text),
        });
    }

    let creation = chrono::DateTime::from_timestamp_millis(date_ms)
        .unwrap_or_default()
        .format("D:%Y%m%d%H%M%SZ")
        .to_string();
    let info = DocInfo {
        title: "Your appointment has been rearranged",
        creation_date: &creation,
    };
    write_pdf_with_producer(&info, "Hale patient letter", Orientation::Portrait, &w.pages, true)
}

/// A safe file stem for an idempotency key: the key itself if it is a FHIR id
/// (`[A-Za-z0-9-.]{1,64}`, not starting with a dot), else a hash of it.
pub fn file_stem(key: &str) -> String {
    let ok = !key.is_empty()
        && key.len() <= 64
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        key.to_string()
    } else {
        let h = Sha256::digest(key.as_bytes());
        let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("key-{hex}")
    }
}

/// Metadata written beside each letter for whoever prints and posts it.
#[derive(Debug, Clone, Serialize)]
struct LetterManifest<'a> {
    reference: &'a str,
    patient: &'a str,
    appointment: &'a str,
    postage: &'a str,
    address_lines: Vec<String>,
    pdf: String,
    pdf_sha256: String,
    written_at_ms: i64,
}

/// Writes each letter as `<dir>/<id>.pdf` with `<id>.json` beside it (postage,
/// address, SHA-256). The PDF appears by an atomic rename after it and its
/// JSON are on disk, so "the PDF exists" means "the letter was sent": this
/// adapter can answer [`Adapter::check`] exactly.
#[derive(Debug, Clone)]
pub struct LetterDirectory {
    dir: PathBuf,
    sender: Sender,
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

impl LetterDirectory {
    /// Creates `dir` if needed.
    pub fn new(dir: impl Into<PathBuf>, sender: Sender) -> std::io::Result<LetterDirectory> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(LetterDirectory { dir, sender })
    }

    /// Where the letter for idempotency key `key` goes.
    pub fn pdf_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.pdf", file_stem(key)))
    }

    fn write(&self, item: &OutboxItem, channel: Channel, now_ms: i64) -> Result<Receipt, SendError> {
        let Channel::Letter { postage } = channel else {
            return Err(SendError::permanent(format!(
                "the letter directory cannot send {}",
                channel.code()
            )));
        };
        let address = item
            .recipient
            .address
            .as_ref()
            .filter(|a| a.is_usable())
            .ok_or_else(|| SendError::permanent("the patient has no usable postal address"))?;
        let stem = file_stem(&item.id);
        let pdf_name = format!("{stem}.pdf");
        let pdf = render_letter(item, &self.sender, now_ms);
        let sha: String = Sha256::digest(&pdf).iter().map(|b| format!("{b:02x}")).collect();
        let postage_code = match postage {
            hale_sched::letters::Postage::First => "first",
            hale_sched::letters::Postage::Second => "second",
        };
        let manifest = LetterManifest {
            reference: &item.id,
            patient: &item.recipient.patient_id,
            appointment: &item.appointment.id,
            postage: postage_code,
            address_lines: address.envelope_lines(&item.recipient.name),
            pdf: pdf_name.clone(),
            pdf_sha256: sha.clone(),
            written_at_ms: now_ms,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        let io = |e: std::io::Error| SendError::transient(format!("writing the letter to {}: {e}", self.dir.display()));
        write_atomically(&self.dir, &format!("{stem}.json"), &json).map_err(io)?;
        write_atomically(&self.dir, &pdf_name, &pdf).map_err(io)?;
        // Make the renames durable.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(Receipt {
            provider: "letter-directory".into(),
            id: Some(pdf_name),
            detail: format!(
                "{postage_code} class letter written to {} (sha256 {sha})",
                self.pdf_path(&item.id).display()
            ),
        })
    }
}

impl Adapter for LetterDirectory {
    fn name(&self) -> &'static str {
        "letter-directory"
    }

    fn can_check(&self) -> bool {
        true
    }

    fn send<'a>(
        &'a self,
        item: &'a OutboxItem,
        channel: Channel,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Receipt, SendError>> {
        Box::pin(async move {
            let this = self.clone();
            let item = item.clone();
            tokio::task::spawn_blocking(move || this.write(&item, channel, now_ms))
                .await
                .map_err(|e| SendError::transient(format!("letter writer task: {e}")))?
        })
    }

    fn check<'a>(&'a self, item: &'a OutboxItem, _now_ms: i64) -> BoxFuture<'a, Result<Check, SendError>> {
        Box::pin(async move {
            let path = self.pdf_path(&item.id);
            match std::fs::metadata(&path) {
                Ok(_) => Ok(Check::Sent(Receipt {
                    provider: "letter-directory".into(),
                    id: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    detail: format!(
                        "found {} after an interrupted attempt; not written again",
                        path.display()
                    ),
                })),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Check::NotSent),
                Err(e) => Err(SendError::transient(format!("checking {}: {e}", path.display()))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_by_width() {
        let lines = wrap("one two three four five six", Font::Regular, 10.0, 60.0);
        assert!(lines.len() > 1);
        assert_eq!(lines.join(" "), "one two three four five six");
        for l in &lines[..lines.len() - 1] {
            assert!(text_width_pt(&win_ansi(l), Font::Regular, 10.0) <= 60.0);
        }
        assert_eq!(wrap("", Font::Regular, 10.0, 10.0), Vec::<String>::new());
        // A word longer than the line stays whole.
        assert_eq!(wrap("abcdefghijklmnop", Font::Regular, 10.0, 5.0), ["abcdefghijklmnop"]);
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("comm-1.2"), "comm-1.2");
        assert!(file_stem("../etc/passwd").starts_with("key-"));
        assert!(file_stem(".hidden").starts_with("key-"));
        assert!(file_stem("").starts_with("key-"));
        assert_eq!(file_stem(&"a".repeat(65)).len(), 4 + 32);
    }
}
