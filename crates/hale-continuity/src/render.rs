//! Laying a pack's data out as PDF pages and CSV rows.
//!
//! Pages are laid out first, then every page gets its header ("DOWNTIME COPY
//! — data as of … — SITE") and footer ("page X of Y"), once the page count is
//! known. Body text is 10 pt, headings 11–14 pt: readable on a clipboard.

use crate::csv::CsvWriter;
use crate::model::*;
use crate::pdf::{text_width_pt, win_ansi, write_pdf, DocInfo, Font, Op, Orientation, Page};
use crate::time::{age, fmt_day, fmt_day_time, fmt_short_date, fmt_time, pdf_date, rfc3339_utc, Zone};
use crate::{ContinuityError, PackOptions, PAGES_PER_PDF_MAX};
use std::collections::HashMap;

pub(crate) const CLINIC_LIST_PDF: &str = "clinic-list.pdf";
pub(crate) const PATIENT_SUMMARY_PDF: &str = "patient-summary.pdf";
pub(crate) const CLINIC_LIST_CSV: &str = "clinic-list.csv";
pub(crate) const PATIENT_SUMMARY_CSV: &str = "patient-summary.csv";

/// One rendered plaintext file.
pub(crate) struct Rendered {
    pub(crate) name: &'static str,
    pub(crate) bytes: Vec<u8>,
    pub(crate) contents: &'static str,
    pub(crate) pages: Option<usize>,
}

const BODY_PT: f32 = 10.0;
const LEADING_PT: f32 = 12.5;
const MARGIN_PT: f32 = 28.0;
const HEADER_PT: f32 = 54.0;
const FOOTER_PT: f32 = 44.0;
/// Inner padding of a table cell.
const CELL_PAD_PT: f32 = 3.0;

/// Break `text` into lines no wider than `width_pt`: at spaces where it can,
/// inside a word when one word is wider than a line.
pub(crate) fn wrap(text: &str, font: Font, size_pt: f32, width_pt: f32) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let bytes = win_ansi(paragraph.trim_end());
        let mut line: Vec<u8> = Vec::new();
        for word in bytes.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
            let mut candidate = line.clone();
            if !candidate.is_empty() {
                candidate.push(b' ');
            }
            candidate.extend_from_slice(word);
            if text_width_pt(&candidate, font, size_pt) <= width_pt {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            // The word alone: break it if it is still too wide.
            for &b in word {
                line.push(b);
                if text_width_pt(&line, font, size_pt) > width_pt && line.len() > 1 {
                    let last = line.pop().expect("non-empty");
                    lines.push(std::mem::replace(&mut line, vec![last]));
                }
            }
        }
        lines.push(line);
    }
    while lines.len() > 1 && lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

/// Shorten to fit `width_pt`, ending in "…" when cut.
fn fit(text: &str, font: Font, size_pt: f32, width_pt: f32) -> Vec<u8> {
    let mut bytes = win_ansi(text);
    if text_width_pt(&bytes, font, size_pt) <= width_pt {
        return bytes;
    }
    while !bytes.is_empty() && text_width_pt(&bytes, font, size_pt) + text_width_pt(&[0x85], font, size_pt) > width_pt {
        bytes.pop();
    }
    bytes.push(0x85);
    bytes
}

/// What every page of one document says around its content.
struct Frame {
    title: String,
    header: String,
    subheader: String,
    footer: String,
}

/// A document being laid out, top to bottom, page by page.
struct Doc {
    orientation: Orientation,
    width: f32,
    height: f32,
    pages: Vec<Page>,
    /// Top of the free space on the current page.
    y: f32,
    /// Printed at the top of each page after the first of a block (bold).
    continuation: Option<String>,
}

impl Doc {
    fn new(orientation: Orientation) -> Doc {
        let (width, height) = orientation.size_pt();
        Doc {
            orientation,
            width,
            height,
            pages: vec![Page::default()],
            y: height - HEADER_PT,
            continuation: None,
        }
    }

    fn left(&self) -> f32 {
        MARGIN_PT
    }

    fn content_width(&self) -> f32 {
        self.width - 2.0 * MARGIN_PT
    }

    fn top(&self) -> f32 {
        self.height - HEADER_PT
    }

    fn bottom(&self) -> f32 {
        FOOTER_PT
    }

    fn page_is_empty(&self) -> bool {
        self.pages.last().is_none_or(|p| p.ops.is_empty())
    }

    fn page_break(&mut self) -> Result<(), ContinuityError> {
        if self.pages.len() >= PAGES_PER_PDF_MAX {
            return Err(ContinuityError::LimitExceeded {
                what: "Pages in one PDF",
                limit: PAGES_PER_PDF_MAX,
            });
        }
        self.pages.push(Page::default());
        self.y = self.top();
        if let Some(c) = self.continuation.clone() {
            self.line(self.left(), Font::Bold, BODY_PT, &c, self.content_width())?;
            self.y -= 4.0;
        }
        Ok(())
    }

    /// Make room for `h` points; true when that took a new page.
    fn need(&mut self, h: f32) -> Result<bool, ContinuityError> {
        if self.y - h < self.bottom() && self.y < self.top() - 1.0 {
            self.page_break()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn op(&mut self, op: Op) {
        self.pages.last_mut().expect("a page").ops.push(op);
    }

    fn text_at(&mut self, x: f32, baseline: f32, font: Font, size_pt: f32, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.op(Op::Text {
                x,
                y: baseline,
                font,
                size_pt,
                bytes,
            });
        }
    }

    /// Wrapped text starting at `x`, advancing the cursor.
    fn line(&mut self, x: f32, font: Font, size_pt: f32, text: &str, width_pt: f32) -> Result<(), ContinuityError> {
        let leading = size_pt * 1.25;
        for l in wrap(text, font, size_pt, width_pt) {
            self.need(leading)?;
            let baseline = self.y - size_pt;
            self.text_at(x, baseline, font, size_pt, l);
            self.y -= leading;
        }
        Ok(())
    }

    fn rule(&mut self, width_pt: f32) {
        let (x1, x2, y) = (self.left(), self.width - MARGIN_PT, self.y);
        self.op(Op::Line {
            x1,
            y1: y,
            x2,
            y2: y,
            width_pt,
        });
    }

    fn band(&mut self, h: f32, gray: f32) {
        let (x, w, y) = (self.left(), self.content_width(), self.y);
        self.op(Op::Fill {
            x,
            y: y - h,
            w,
            h,
            gray,
        });
    }

    /// Header and footer on every page, then the PDF bytes.
    fn finish(mut self, frame: &Frame, creation_ms: i64) -> (Vec<u8>, usize) {
        let total = self.pages.len();
        let (w, h) = (self.width, self.height);
        let right = w - MARGIN_PT;
        for (i, page) in self.pages.iter_mut().enumerate() {
            let mut ops = Vec::with_capacity(8);
            let title = win_ansi(&frame.title);
            let title_w = text_width_pt(&title, Font::Bold, 11.0);
            let header = fit(&frame.header, Font::Bold, 11.0, right - MARGIN_PT - title_w - 12.0);
            ops.push(Op::Text {
                x: MARGIN_PT,
                y: h - 24.0,
                font: Font::Bold,
                size_pt: 11.0,
                bytes: header,
            });
            ops.push(Op::Text {
                x: right - title_w,
                y: h - 24.0,
                font: Font::Bold,
                size_pt: 11.0,
                bytes: title,
            });
            ops.push(Op::Text {
                x: MARGIN_PT,
                y: h - 38.0,
                font: Font::Regular,
                size_pt: BODY_PT,
                bytes: fit(&frame.subheader, Font::Regular, BODY_PT, right - MARGIN_PT),
            });
            ops.push(Op::Line {
                x1: MARGIN_PT,
                y1: h - 44.0,
                x2: right,
                y2: h - 44.0,
                width_pt: 1.0,
            });
            ops.push(Op::Line {
                x1: MARGIN_PT,
                y1: 34.0,
                x2: right,
                y2: 34.0,
                width_pt: 0.5,
            });
            let number = win_ansi(&format!("page {} of {total}", i + 1));
            let number_w = text_width_pt(&number, Font::Bold, BODY_PT);
            ops.push(Op::Text {
                x: MARGIN_PT,
                y: 22.0,
                font: Font::Regular,
                size_pt: BODY_PT,
                bytes: fit(
                    &frame.footer,
                    Font::Regular,
                    BODY_PT,
                    right - MARGIN_PT - number_w - 12.0,
                ),
            });
            ops.push(Op::Text {
                x: right - number_w,
                y: 22.0,
                font: Font::Bold,
                size_pt: BODY_PT,
                bytes: number,
            });
            ops.append(&mut page.ops);
            page.ops = ops;
        }
        let info = DocInfo {
            title: &frame.title,
            creation_date: &pdf_date(creation_ms),
        };
        (write_pdf(&info, self.orientation, &self.pages, true), total)
    }
}

fn frame(data: &PackData, zone: Zone, title: &str) -> Frame {
    let last_change = match data.last_change_ms {
        Some(t) => format!(
            "last change received {} {}",
            zone.local(t).format("%d %b %H:%M"),
            zone.abbreviation(t)
        ),
        None => "no changes recorded".into(),
    };
    let days = if data.first_day == data.last_day {
        data.first_day.format("%d %b %Y").to_string()
    } else {
        format!(
            "{} to {}",
            data.first_day.format("%a %d %b"),
            data.last_day.format("%a %d %b %Y")
        )
    };
    Frame {
        title: title.to_string(),
        header: format!(
            "DOWNTIME COPY — data as of {} — {}",
            fmt_day_time(zone, data.now_ms),
            data.site
        ),
        subheader: format!(
            "{} · {days} · store index {} · {last_change}",
            data.site_name, data.store_index
        ),
        footer: "CONFIDENTIAL: keep secure, shred after use. Check against Hale when it is back.".to_string(),
    }
}

fn short_use(usage: Option<&str>) -> &str {
    match usage {
        Some("mobile") => "mob",
        Some(u) => u,
        None => "",
    }
}

fn phones_cell(card: Option<&PatientCard>) -> String {
    match card {
        Some(c) if !c.phones.is_empty() => c
            .phones
            .iter()
            .map(|p| {
                format!("{} {}", p.value, short_use(p.usage.as_deref()))
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(_) => "(none recorded)".into(),
        None => String::new(),
    }
}

fn dob_cell(card: &PatientCard, today: chrono::NaiveDate) -> String {
    match (card.birth_date, &card.birth_text) {
        (Some(b), _) => match age(b, today) {
            Some(a) => format!("{} ({a})", b.format("%d %b %Y")),
            None => b.format("%d %b %Y").to_string(),
        },
        (None, Some(t)) => t.clone(),
        (None, None) => "(not recorded)".into(),
    }
}

fn short_priority(p: Option<u64>) -> String {
    match p {
        Some(1) => "1 2WW/Emerg.".into(),
        other => priority_label(other),
    }
}

struct Column {
    title: &'static str,
    width: f32,
}

const CLINIC_COLUMNS: &[Column] = &[
    Column {
        title: "Time",
        width: 64.0,
    },
    Column {
        title: "Patient",
        width: 164.0,
    },
    Column {
        title: "NHS number",
        width: 72.0,
    },
    Column {
        title: "Date of birth",
        width: 90.0,
    },
    Column {
        title: "Phone",
        width: 114.0,
    },
    Column {
        title: "Category",
        width: 80.0,
    },
    Column {
        title: "Priority",
        width: 76.0,
    },
    Column {
        title: "Clinician",
        width: 74.0,
    },
    Column {
        title: "Status",
        width: 50.0,
    },
];

fn session_title(s: &Session, zone: Zone) -> String {
    let times = match (s.start_ms, s.end_ms) {
        (Some(a), Some(b)) => format!(" {}–{}", fmt_time(zone, a), fmt_time(zone, b)),
        (Some(a), None) => format!(" from {}", fmt_time(zone, a)),
        _ => String::new(),
    };
    format!("{}{times} — {}", fmt_day(s.day), s.clinic)
}

fn session_detail(s: &Session) -> String {
    let mut parts = Vec::new();
    if let Some(service) = &s.service {
        parts.push(service.clone());
    }
    if let Some(lead) = &s.lead {
        parts.push(format!("Lead: {lead}"));
    }
    parts.push(if s.slots > 0 {
        format!("{} booked, {} slots", s.entries.len(), s.slots)
    } else {
        format!("{} booked", s.entries.len())
    });
    parts.push(match (&s.schedule_id, &s.location_id) {
        (Some(id), _) => format!("Schedule {id}"),
        (None, Some(l)) => format!("Location {l} (no schedule)"),
        (None, None) => String::new(),
    });
    parts.retain(|p| !p.is_empty());
    parts.join(" · ")
}

fn table_header(doc: &mut Doc, columns: &[Column]) -> Result<(), ContinuityError> {
    doc.need(LEADING_PT + 2.0)?;
    let mut x = doc.left();
    let baseline = doc.y - BODY_PT;
    for c in columns {
        doc.text_at(x + CELL_PAD_PT, baseline, Font::Bold, BODY_PT, win_ansi(c.title));
        x += c.width;
    }
    doc.y -= LEADING_PT;
    doc.rule(0.8);
    doc.y -= 2.0;
    Ok(())
}

/// One table row: cells wrapped to their columns, kept together on one page.
/// Returns true when it had to start a new page (after which the caller's
/// `redraw` has put the headings back).
fn table_row(
    doc: &mut Doc,
    columns: &[Column],
    cells: &[(Font, String)],
    redraw: &mut dyn FnMut(&mut Doc) -> Result<(), ContinuityError>,
) -> Result<(), ContinuityError> {
    table_row_h(doc, columns, cells, redraw, 0.0)
}

/// [`table_row`] at least `min_h` points tall (room to sign by hand).
fn table_row_h(
    doc: &mut Doc,
    columns: &[Column],
    cells: &[(Font, String)],
    redraw: &mut dyn FnMut(&mut Doc) -> Result<(), ContinuityError>,
    min_h: f32,
) -> Result<(), ContinuityError> {
    let wrapped: Vec<Vec<Vec<u8>>> = cells
        .iter()
        .zip(columns)
        .map(|((font, text), c)| wrap(text, *font, BODY_PT, c.width - 2.0 * CELL_PAD_PT))
        .collect();
    let lines = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let h = (lines as f32 * LEADING_PT + 3.0).max(min_h);
    if doc.need(h)? {
        redraw(doc)?;
    }
    let mut x = doc.left();
    for ((lines, (font, _)), c) in wrapped.into_iter().zip(cells).zip(columns) {
        for (i, l) in lines.into_iter().enumerate() {
            let baseline = doc.y - BODY_PT - i as f32 * LEADING_PT;
            doc.text_at(x + CELL_PAD_PT, baseline, *font, BODY_PT, l);
        }
        x += c.width;
    }
    doc.y -= h;
    doc.rule(0.25);
    Ok(())
}

fn clinic_list_pdf(
    data: &PackData,
    zone: Zone,
    cards: &HashMap<&str, &PatientCard>,
) -> Result<(Vec<u8>, usize), ContinuityError> {
    let mut doc = Doc::new(Orientation::Landscape);
    let today = zone.local(data.now_ms).date();
    if data.sessions.is_empty() {
        doc.line(
            doc.left(),
            Font::Bold,
            12.0,
            &format!(
                "No clinic sessions at {} from {} to {}.",
                data.site,
                fmt_day(data.first_day),
                fmt_day(data.last_day)
            ),
            doc.content_width(),
        )?;
    }
    let mut last_day = None;
    for s in &data.sessions {
        // A new day starts a new page, so each day's lists can be handed out separately.
        if last_day.is_some_and(|d| d != s.day) && !doc.page_is_empty() {
            doc.page_break()?;
        }
        last_day = Some(s.day);
        let title = session_title(s, zone);
        let detail = session_detail(s);
        // Title, detail, table header and at least one row on the same page.
        doc.need(30.0 + LEADING_PT * 3.0 + 8.0)?;
        let draw_title = |doc: &mut Doc, title: &str| -> Result<(), ContinuityError> {
            doc.band(30.0, 0.88);
            let width = doc.content_width() - 8.0;
            let (x, y) = (doc.left() + 4.0, doc.y);
            doc.text_at(x, y - 13.0, Font::Bold, 12.0, fit(title, Font::Bold, 12.0, width));
            doc.text_at(
                x,
                y - 26.0,
                Font::Regular,
                BODY_PT,
                fit(&detail, Font::Regular, BODY_PT, width),
            );
            doc.y -= 34.0;
            Ok(())
        };
        draw_title(&mut doc, &title)?;
        table_header(&mut doc, CLINIC_COLUMNS)?;
        if s.entries.is_empty() {
            doc.line(
                doc.left() + CELL_PAD_PT,
                Font::Regular,
                BODY_PT,
                "No booked patients in this session.",
                doc.content_width(),
            )?;
        }
        let continued = format!("{title} (continued)");
        let mut redraw = |doc: &mut Doc| -> Result<(), ContinuityError> {
            draw_title(doc, &continued)?;
            table_header(doc, CLINIC_COLUMNS)
        };
        for e in &s.entries {
            let card = e.patient_id.as_deref().and_then(|p| cards.get(p).copied());
            let mut time = fmt_time(zone, e.start_ms);
            if let Some(end) = e.end_ms {
                time.push_str(&format!("–{}", fmt_time(zone, end)));
            }
            if let Some(note) = &e.slot_note {
                time.push('\n');
                time.push_str(note);
            }
            let cells = [
                (Font::Regular, time),
                (
                    Font::Bold,
                    card.map(|c| c.name.list_form())
                        .unwrap_or_else(|| "(no patient on the booking)".into()),
                ),
                (
                    Font::Regular,
                    card.and_then(|c| c.nhs_number.as_deref())
                        .map(format_nhs)
                        .unwrap_or_default(),
                ),
                (Font::Regular, card.map(|c| dob_cell(c, today)).unwrap_or_default()),
                (Font::Regular, phones_cell(card)),
                (Font::Regular, e.category.clone()),
                (
                    if e.priority == Some(1) {
                        Font::Bold
                    } else {
                        Font::Regular
                    },
                    short_priority(e.priority),
                ),
                (Font::Regular, e.clinician.clone().unwrap_or_default()),
                (Font::Regular, e.status.clone()),
            ];
            table_row(&mut doc, CLINIC_COLUMNS, &cells, &mut redraw)?;
        }
        doc.y -= 10.0;
    }
    Ok(doc.finish(&frame(data, zone, "Clinic lists"), data.now_ms))
}

fn heading(doc: &mut Doc, text: &str) -> Result<(), ContinuityError> {
    doc.need(LEADING_PT * 3.0)?;
    doc.y -= 5.0;
    doc.line(doc.left(), Font::Bold, 11.0, text, doc.content_width())?;
    doc.rule(0.5);
    doc.y -= 3.0;
    Ok(())
}

/// "Label: value" lines with the label in its own column.
fn labelled(doc: &mut Doc, label: &str, value: &str) -> Result<(), ContinuityError> {
    const LABEL_W: f32 = 92.0;
    let lines = wrap(value, Font::Regular, BODY_PT, doc.content_width() - LABEL_W);
    for (i, l) in lines.into_iter().enumerate() {
        doc.need(LEADING_PT)?;
        let baseline = doc.y - BODY_PT;
        if i == 0 {
            let label = fit(label, Font::Bold, BODY_PT, LABEL_W - 4.0);
            doc.text_at(doc.left(), baseline, Font::Bold, BODY_PT, label);
        }
        doc.text_at(doc.left() + LABEL_W, baseline, Font::Regular, BODY_PT, l);
        doc.y -= LEADING_PT;
    }
    Ok(())
}

fn para(doc: &mut Doc, font: Font, text: &str) -> Result<(), ContinuityError> {
    let (x, w) = (doc.left(), doc.content_width());
    doc.line(x, font, BODY_PT, text, w)
}

fn omitted(doc: &mut Doc, n: usize, what: &str) -> Result<(), ContinuityError> {
    if n > 0 {
        para(
            doc,
            Font::Regular,
            &format!("… and {n} more {what} in Hale, not printed here."),
        )?;
    }
    Ok(())
}

const RESULT_COLUMNS: &[Column] = &[
    Column {
        title: "Test",
        width: 200.0,
    },
    Column {
        title: "Result",
        width: 120.0,
    },
    Column {
        title: "Flag",
        width: 35.0,
    },
    Column {
        title: "Reference range",
        width: 95.0,
    },
    Column {
        title: "Date",
        width: 73.0,
    },
];

const CHART_COLUMNS: &[Column] = &[
    Column {
        title: "Day",
        width: 58.0,
    },
    Column {
        title: "Time",
        width: 40.0,
    },
    Column {
        title: "Medicine",
        width: 180.0,
    },
    Column {
        title: "Dose",
        width: 55.0,
    },
    Column {
        title: "Route",
        width: 80.0,
    },
    Column {
        title: "Given at",
        width: 45.0,
    },
    Column {
        title: "Signature",
        width: 65.0,
    },
];

/// Alerts first, in a ruled box, so they are seen before anything else.
fn alerts_box(doc: &mut Doc, p: &PatientCard) -> Result<(), ContinuityError> {
    if p.alerts.is_empty() {
        return Ok(());
    }
    const PAD_PT: f32 = 5.0;
    let inner = doc.content_width() - 2.0 * PAD_PT;
    let mut lines: Vec<(Font, Vec<u8>)> = vec![(Font::Bold, win_ansi("ALERTS"))];
    for a in &p.alerts {
        let mut t = a.text.clone();
        let extra: Vec<String> = [a.category.clone(), a.since.as_ref().map(|d| format!("since {d}"))]
            .into_iter()
            .flatten()
            .collect();
        if !extra.is_empty() {
            t.push_str(&format!(" ({})", extra.join(", ")));
        }
        lines.extend(
            wrap(&t, Font::Bold, BODY_PT, inner)
                .into_iter()
                .map(|l| (Font::Bold, l)),
        );
    }
    if p.omitted.alerts > 0 {
        lines.push((
            Font::Regular,
            win_ansi(&format!(
                "… and {} more alerts in Hale, not printed here.",
                p.omitted.alerts
            )),
        ));
    }
    let h = lines.len() as f32 * LEADING_PT + 2.0 * PAD_PT;
    doc.need(h + 4.0)?;
    let (x1, x2, top, bottom) = (doc.left(), doc.width - MARGIN_PT, doc.y, doc.y - h);
    for (ax, ay, bx, by) in [
        (x1, top, x2, top),
        (x1, bottom, x2, bottom),
        (x1, top, x1, bottom),
        (x2, top, x2, bottom),
    ] {
        doc.op(Op::Line {
            x1: ax,
            y1: ay,
            x2: bx,
            y2: by,
            width_pt: 1.5,
        });
    }
    let mut y = top - PAD_PT;
    for (font, l) in lines {
        doc.text_at(x1 + PAD_PT, y - BODY_PT, font, BODY_PT, l);
        y -= LEADING_PT;
    }
    doc.y = bottom - 6.0;
    Ok(())
}

fn patient_section(
    doc: &mut Doc,
    p: &PatientCard,
    zone: Zone,
    today: chrono::NaiveDate,
    on_lists: &[(&Session, &Entry)],
) -> Result<(), ContinuityError> {
    let name = p.name.list_form();
    let nhs = p
        .nhs_number
        .as_deref()
        .map(|n| format!("NHS {}", format_nhs(n)))
        .unwrap_or_else(|| "NHS number not recorded".into());
    doc.continuation = None;
    if !doc.page_is_empty() {
        doc.page_break()?;
    }
    // Title band.
    doc.band(36.0, 0.85);
    let nhs_bytes = win_ansi(&nhs);
    let nhs_w = text_width_pt(&nhs_bytes, Font::Bold, 13.0);
    let (x, y, right) = (doc.left() + 4.0, doc.y, doc.width - MARGIN_PT - 4.0);
    doc.text_at(
        x,
        y - 15.0,
        Font::Bold,
        14.0,
        fit(&name, Font::Bold, 14.0, right - x - nhs_w - 10.0),
    );
    doc.text_at(right - nhs_w, y - 15.0, Font::Bold, 13.0, nhs_bytes);
    let mut facts = vec![format!("Born {}", dob_cell(p, today))];
    if let Some(g) = &p.gender {
        facts.push(g.clone());
    }
    if let Some(d) = &p.deceased {
        facts.push(d.clone());
    }
    facts.push(format!("Hale id {}", p.id));
    doc.text_at(
        x,
        y - 30.0,
        Font::Regular,
        BODY_PT,
        fit(&facts.join(" · "), Font::Regular, BODY_PT, right - x),
    );
    doc.y -= 40.0;
    doc.continuation = Some(format!("{name} — {nhs} (continued)"));

    alerts_box(doc, p)?;

    heading(doc, "Active problems")?;
    if p.problems.is_empty() {
        para(doc, Font::Regular, "No active problems recorded in Hale.")?;
    }
    for pr in &p.problems {
        let t = match &pr.onset {
            Some(o) => format!("{} (since {o})", pr.text),
            None => pr.text.clone(),
        };
        para(doc, Font::Regular, &t)?;
    }
    omitted(doc, p.omitted.problems, "problems")?;

    heading(doc, "Current medicines")?;
    if p.medicines.is_empty() {
        para(
            doc,
            Font::Regular,
            "No current medicines recorded in Hale. No record is not the same as no medicines: ask the patient.",
        )?;
    }
    for m in &p.medicines {
        // Name on its own line, then dose · route · frequency, then the sig:
        // short lines that never split a dose from its unit.
        let mut name = m.name.clone();
        if m.source == "reported" {
            name.push_str(" (reported by the patient)");
        }
        para(doc, Font::Bold, &name)?;
        let how: Vec<String> = [m.dose.clone(), m.route.clone(), m.frequency.clone(), m.dates.clone()]
            .into_iter()
            .flatten()
            .collect();
        if !how.is_empty() {
            para(doc, Font::Regular, &how.join(" · "))?;
        }
        if let Some(i) = &m.instructions {
            para(doc, Font::Regular, &format!("Instructions: {i}"))?;
        }
        doc.y -= 2.0;
    }
    omitted(doc, p.omitted.medicines, "medicines")?;

    if !p.chart.is_empty() {
        heading(doc, "Drug chart for this pack's days (sign each dose given)")?;
        table_header(doc, CHART_COLUMNS)?;
        let mut redraw = |doc: &mut Doc| table_header(doc, CHART_COLUMNS);
        for d in &p.chart {
            let cells = [
                (Font::Regular, d.day.format("%a %d/%m").to_string()),
                (Font::Bold, d.time.clone()),
                (Font::Regular, d.medicine.clone()),
                (Font::Regular, d.dose.clone()),
                (Font::Regular, d.route.clone()),
                (Font::Regular, String::new()),
                (Font::Regular, String::new()),
            ];
            table_row_h(doc, CHART_COLUMNS, &cells, &mut redraw, 22.0)?;
        }
        omitted(doc, p.omitted.chart, "scheduled doses")?;
    }

    heading(doc, "Allergies")?;
    if p.allergies.is_empty() {
        para(
            doc,
            Font::Regular,
            "No allergies recorded in Hale. No record is not the same as no allergy: ask the patient.",
        )?;
    }
    for a in &p.allergies {
        let mut t = a.substance.clone();
        if let Some(r) = &a.reaction {
            t.push_str(&format!(" — {r}"));
        }
        let mut extra = Vec::new();
        if let Some(sv) = &a.severity {
            extra.push(sv.clone());
        }
        if let Some(c) = &a.criticality {
            extra.push(format!("{c} criticality"));
        }
        if let Some(v) = &a.verification {
            extra.push(v.clone());
        }
        if let Some(r) = &a.recorded {
            extra.push(format!("recorded {r}"));
        }
        if !extra.is_empty() {
            t.push_str(&format!(" ({})", extra.join(", ")));
        }
        let font = if a.criticality.as_deref() == Some("high") {
            Font::Bold
        } else {
            Font::Regular
        };
        para(doc, font, &t)?;
    }
    omitted(doc, p.omitted.allergies, "allergies")?;

    heading(doc, "Contact details")?;
    if p.phones.is_empty() {
        labelled(doc, "Phone", "(none recorded)")?;
    }
    for ph in &p.phones {
        labelled(doc, "Phone", &ph.display())?;
    }
    for e in &p.emails {
        labelled(doc, "Email", &e.display())?;
    }
    if p.addresses.is_empty() {
        labelled(doc, "Address", "(none recorded)")?;
    }
    for a in &p.addresses {
        labelled(doc, "Address", a)?;
    }
    if let Some(gp) = &p.gp {
        labelled(doc, "GP", gp)?;
    }

    heading(doc, "Next of kin and contacts")?;
    if p.kin.is_empty() {
        para(doc, Font::Regular, "None recorded.")?;
    }
    for k in &p.kin {
        let mut t = format!("{}: ", k.role());
        t.push_str(if k.name.is_empty() {
            "(name not recorded)"
        } else {
            &k.name
        });
        if !k.phones.is_empty() {
            let phones: Vec<String> = k.phones.iter().map(ContactPoint::display).collect();
            t.push_str(&format!(" — {}", phones.join(", ")));
        }
        if let Some(a) = &k.address {
            t.push_str(&format!(" — {a}"));
        }
        para(doc, Font::Regular, &t)?;
    }
    omitted(doc, p.omitted.contacts, "contacts")?;

    heading(doc, "Latest blood results (most recent of each test)")?;
    if p.results.is_empty() {
        para(doc, Font::Regular, "No laboratory results in Hale.")?;
    } else {
        table_header(doc, RESULT_COLUMNS)?;
        let mut redraw = |doc: &mut Doc| table_header(doc, RESULT_COLUMNS);
        for r in &p.results {
            let flagged = r.flag.is_some();
            let cells = [
                (Font::Regular, r.test.clone()),
                (if flagged { Font::Bold } else { Font::Regular }, r.value.clone()),
                (Font::Bold, r.flag.clone().unwrap_or_default()),
                (Font::Regular, r.range.clone().unwrap_or_default()),
                (
                    Font::Regular,
                    r.when_ms.map(|t| fmt_short_date(zone, t)).unwrap_or_default(),
                ),
            ];
            table_row(doc, RESULT_COLUMNS, &cells, &mut redraw)?;
        }
    }
    omitted(doc, p.omitted.results, "tests")?;

    heading(doc, "Imaging reports")?;
    if p.imaging.is_empty() {
        para(doc, Font::Regular, "No imaging reports in Hale.")?;
    }
    for r in &p.imaging {
        let when = r.when_ms.map(|t| fmt_short_date(zone, t)).unwrap_or_default();
        let status = if r.status == "final" {
            String::new()
        } else {
            format!(" ({})", r.status)
        };
        para(doc, Font::Bold, &format!("{when} · {}{status}", r.study))?;
        para(doc, Font::Regular, &format!("Conclusion: {}", r.conclusion))?;
    }
    omitted(doc, p.omitted.imaging, "imaging reports")?;

    heading(doc, "Recent clinical notes")?;
    if p.notes.is_empty() {
        para(doc, Font::Regular, "No clinical notes in Hale.")?;
    }
    for n in &p.notes {
        let mut t = n.when_ms.map(|t| fmt_short_date(zone, t)).unwrap_or_default();
        t.push_str(&format!(" · {}", n.title));
        if let Some(a) = &n.author {
            t.push_str(&format!(" · {a}"));
        }
        para(doc, Font::Bold, &t)?;
        let mut body = n.text.clone();
        if n.cut {
            body.push_str(" … [cut; the full note is in Hale]");
        }
        para(doc, Font::Regular, &body)?;
        doc.y -= 3.0;
    }
    omitted(doc, p.omitted.notes, "notes")?;

    heading(doc, "Upcoming appointments")?;
    if p.upcoming.is_empty() {
        para(doc, Font::Regular, "None booked.")?;
    }
    for u in &p.upcoming {
        let mut t = format!("{} — {}", fmt_day_time(zone, u.start_ms), u.place);
        if let Some(c) = &u.clinician {
            t.push_str(&format!(" — {c}"));
        }
        if let Some(d) = &u.description {
            t.push_str(&format!(" — {d}"));
        }
        t.push_str(&format!(" ({})", u.status));
        para(doc, Font::Regular, &t)?;
    }
    omitted(doc, p.omitted.upcoming, "appointments")?;

    heading(doc, "On this pack's clinic lists")?;
    for (s, e) in on_lists {
        para(
            doc,
            Font::Regular,
            &format!("{} {} — {}", fmt_day(s.day), fmt_time(zone, e.start_ms), s.clinic),
        )?;
    }
    doc.continuation = None;
    Ok(())
}

fn patient_summary_pdf(
    data: &PackData,
    zone: Zone,
    lists: &HashMap<&str, Vec<(&Session, &Entry)>>,
) -> Result<(Vec<u8>, usize), ContinuityError> {
    let mut doc = Doc::new(Orientation::Portrait);
    let today = zone.local(data.now_ms).date();
    if data.patients.is_empty() {
        para(
            &mut doc,
            Font::Bold,
            "No patients are booked at this site in this period.",
        )?;
    }
    for p in &data.patients {
        let on = lists.get(p.id.as_str()).map(Vec::as_slice).unwrap_or_default();
        patient_section(&mut doc, p, zone, today, on)?;
    }
    Ok(doc.finish(&frame(data, zone, "Patient summaries"), data.now_ms))
}

fn local_text(zone: Zone, t: i64) -> String {
    zone.local(t).format("%Y-%m-%d %H:%M").to_string()
}

fn clinic_list_csv(data: &PackData, zone: Zone, cards: &HashMap<&str, &PatientCard>) -> Vec<u8> {
    let mut w = CsvWriter::new(&[
        "session_date",
        "clinic",
        "schedule_id",
        "location_id",
        "session_lead",
        "start_local",
        "end_local",
        "start_utc",
        "slot_note",
        "appointment_id",
        "status",
        "patient_id",
        "patient_name",
        "nhs_number",
        "birth_date",
        "phones",
        "category",
        "priority",
        "clinician",
        "description",
    ]);
    for s in &data.sessions {
        let base = [
            s.day.format("%Y-%m-%d").to_string(),
            s.clinic.clone(),
            s.schedule_id.clone().unwrap_or_default(),
            s.location_id.clone().unwrap_or_default(),
            s.lead.clone().unwrap_or_default(),
        ];
        if s.entries.is_empty() {
            let mut row = base.to_vec();
            row.extend(std::iter::repeat_n(String::new(), 15));
            w.row(&row);
        }
        for e in &s.entries {
            let card = e.patient_id.as_deref().and_then(|p| cards.get(p).copied());
            let mut row = base.to_vec();
            row.extend([
                local_text(zone, e.start_ms),
                e.end_ms.map(|t| local_text(zone, t)).unwrap_or_default(),
                rfc3339_utc(e.start_ms),
                e.slot_note.clone().unwrap_or_default(),
                e.appointment_id.clone(),
                e.status.clone(),
                e.patient_id.clone().unwrap_or_default(),
                card.map(|c| c.name.list_form()).unwrap_or_default(),
                card.and_then(|c| c.nhs_number.clone()).unwrap_or_default(),
                card.and_then(|c| {
                    c.birth_date
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .or(c.birth_text.clone())
                })
                .unwrap_or_default(),
                card.map(|c| {
                    c.phones
                        .iter()
                        .map(ContactPoint::display)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
                e.category.clone(),
                priority_label(e.priority),
                e.clinician.clone().unwrap_or_default(),
                e.description.clone().unwrap_or_default(),
            ]);
            w.row(&row);
        }
    }
    w.into_bytes()
}

fn patient_summary_csv(data: &PackData, zone: Zone, lists: &HashMap<&str, Vec<(&Session, &Entry)>>) -> Vec<u8> {
    let mut w = CsvWriter::new(&[
        "patient_id",
        "nhs_number",
        "patient_name",
        "birth_date",
        "section",
        "date",
        "item",
        "detail",
    ]);
    let day = |t: Option<i64>| {
        t.map(|t| zone.local(t).format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    for p in &data.patients {
        let birth = p
            .birth_date
            .map(|d| d.format("%Y-%m-%d").to_string())
            .or(p.birth_text.clone())
            .unwrap_or_default();
        let mut row = |section: &str, date: String, item: String, detail: String| {
            w.row(&[
                p.id.clone(),
                p.nhs_number.clone().unwrap_or_default(),
                p.name.list_form(),
                birth.clone(),
                section.to_string(),
                date,
                item,
                detail,
            ]);
        };
        row(
            "demographics",
            String::new(),
            "gender".into(),
            p.gender.clone().unwrap_or_default(),
        );
        if let Some(d) = &p.deceased {
            row("demographics", String::new(), "deceased".into(), d.clone());
        }
        for ph in &p.phones {
            row(
                "phone",
                String::new(),
                ph.usage.clone().unwrap_or_default(),
                ph.value.clone(),
            );
        }
        for e in &p.emails {
            row(
                "email",
                String::new(),
                e.usage.clone().unwrap_or_default(),
                e.value.clone(),
            );
        }
        for a in &p.addresses {
            row("address", String::new(), String::new(), a.clone());
        }
        if let Some(gp) = &p.gp {
            row("gp", String::new(), String::new(), gp.clone());
        }
        for k in &p.kin {
            let phones: Vec<String> = k.phones.iter().map(ContactPoint::display).collect();
            let mut detail = k.name.clone();
            if !phones.is_empty() {
                detail.push_str(&format!("; {}", phones.join("; ")));
            }
            if let Some(a) = &k.address {
                detail.push_str(&format!("; {a}"));
            }
            row("next-of-kin", String::new(), k.role(), detail);
        }
        for a in &p.alerts {
            let detail = [a.category.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            row("alert", a.since.clone().unwrap_or_default(), a.text.clone(), detail);
        }
        for pr in &p.problems {
            row(
                "problem",
                pr.onset.clone().unwrap_or_default(),
                pr.text.clone(),
                String::new(),
            );
        }
        for m in &p.medicines {
            let detail = [
                m.dose.clone(),
                m.route.clone(),
                m.frequency.clone(),
                m.dates.clone(),
                m.instructions.clone(),
                Some(m.source.to_string()),
                m.inpatient
                    .then(|| "given on the ward or unit (drug chart)".to_string()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            row("medicine", String::new(), m.name.clone(), detail);
        }
        for d in &p.chart {
            row(
                "drug-chart",
                format!("{} {}", d.day.format("%Y-%m-%d"), d.time),
                d.medicine.clone(),
                format!("{}; {}", d.dose, d.route),
            );
        }
        for a in &p.allergies {
            let detail = [
                a.reaction.clone(),
                a.severity.clone(),
                a.criticality.as_ref().map(|c| format!("{c} criticality")),
                a.verification.clone(),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            row(
                "allergy",
                a.recorded.clone().unwrap_or_default(),
                a.substance.clone(),
                detail,
            );
        }
        for r in &p.results {
            let mut detail = r.value.clone();
            if let Some(f) = &r.flag {
                detail.push_str(&format!(" [{f}]"));
            }
            if let Some(range) = &r.range {
                detail.push_str(&format!(" (range {range})"));
            }
            row("blood-result", day(r.when_ms), r.test.clone(), detail);
        }
        for r in &p.imaging {
            row("imaging-report", day(r.when_ms), r.study.clone(), r.conclusion.clone());
        }
        for n in &p.notes {
            let title = match &n.author {
                Some(a) => format!("{} ({a})", n.title),
                None => n.title.clone(),
            };
            let mut text = n.text.clone();
            if n.cut {
                text.push_str(" … [cut]");
            }
            row("clinical-note", day(n.when_ms), title, text);
        }
        for u in &p.upcoming {
            let mut detail = u.place.clone();
            if let Some(c) = &u.clinician {
                detail.push_str(&format!("; {c}"));
            }
            detail.push_str(&format!("; {}", u.status));
            row(
                "upcoming-appointment",
                local_text(zone, u.start_ms),
                u.description.clone().unwrap_or_default(),
                detail,
            );
        }
        for (s, e) in lists.get(p.id.as_str()).map(Vec::as_slice).unwrap_or_default() {
            row(
                "on-clinic-list",
                local_text(zone, e.start_ms),
                s.clinic.clone(),
                e.appointment_id.clone(),
            );
        }
    }
    w.into_bytes()
}

/// The four data files of a pack, in plaintext.
pub(crate) fn render(data: &PackData, opts: &PackOptions) -> Result<Vec<Rendered>, ContinuityError> {
    let zone = opts.zone;
    let cards: HashMap<&str, &PatientCard> = data.patients.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut lists: HashMap<&str, Vec<(&Session, &Entry)>> = HashMap::new();
    for s in &data.sessions {
        for e in &s.entries {
            if let Some(p) = &e.patient_id {
                lists.entry(p.as_str()).or_default().push((s, e));
            }
        }
    }
    let (clinic_pdf, clinic_pages) = clinic_list_pdf(data, zone, &cards)?;
    let (summary_pdf, summary_pages) = patient_summary_pdf(data, zone, &lists)?;
    Ok(vec![
        Rendered {
            name: CLINIC_LIST_PDF,
            bytes: clinic_pdf,
            contents: "clinic lists (PDF, A4 landscape)",
            pages: Some(clinic_pages),
        },
        Rendered {
            name: PATIENT_SUMMARY_PDF,
            bytes: summary_pdf,
            contents: "patient summaries (PDF, A4 portrait)",
            pages: Some(summary_pages),
        },
        Rendered {
            name: CLINIC_LIST_CSV,
            bytes: clinic_list_csv(data, zone, &cards),
            contents: "clinic lists (CSV, one row per appointment)",
            pages: None,
        },
        Rendered {
            name: PATIENT_SUMMARY_CSV,
            bytes: patient_summary_csv(data, zone, &lists),
            contents: "patient summaries (CSV, one row per fact)",
            pages: None,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_wrap(text: &str, width_pt: f32, want: &[&str]) {
        let got: Vec<String> = wrap(text, Font::Regular, 10.0, width_pt)
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect();
        assert_eq!(got, want, "wrap({text:?}, {width_pt})");
    }

    #[test]
    fn wrap_cases() {
        check_wrap("", 100.0, &[""]);
        check_wrap("short", 100.0, &["short"]);
        // "aaaa" is 22.24 pt at 10 pt; two words and a space are 47.26 pt.
        check_wrap("aaaa aaaa", 50.0, &["aaaa aaaa"]);
        check_wrap("aaaa aaaa", 40.0, &["aaaa", "aaaa"]);
        check_wrap("aaaa  aaaa   aaaa", 50.0, &["aaaa aaaa", "aaaa"]);
        // A word wider than the line is broken.
        check_wrap("aaaaaaaaaa", 25.0, &["aaaa", "aaaa", "aa"]);
        check_wrap("one\ntwo", 100.0, &["one", "two"]);
        check_wrap("trailing\n\n", 100.0, &["trailing"]);
    }

    #[track_caller]
    fn check_fit(text: &str, width_pt: f32, want: &[u8]) {
        assert_eq!(
            fit(text, Font::Regular, 10.0, width_pt),
            want,
            "fit({text:?}, {width_pt})"
        );
    }

    #[test]
    fn fit_cases() {
        check_fit("aaaa", 100.0, b"aaaa");
        // "aa…" = 11.12 + 10 = 21.12 pt.
        check_fit("aaaaaaaa", 22.0, b"aa\x85");
        check_fit("aaaaaaaa", 5.0, b"\x85");
    }

    fn doc_with_lines(n: usize) -> Doc {
        let mut doc = Doc::new(Orientation::Portrait);
        for i in 0..n {
            doc.line(
                doc.left(),
                Font::Regular,
                BODY_PT,
                &format!("line {i}"),
                doc.content_width(),
            )
            .unwrap();
        }
        doc
    }

    #[test]
    fn pagination_cases() {
        // (842 - 54 - 44) / 12.5 = 59.5 lines fit on a portrait page.
        for (lines, want_pages) in [(0, 1), (1, 1), (59, 1), (60, 2), (119, 3), (200, 4)] {
            assert_eq!(doc_with_lines(lines).pages.len(), want_pages, "{lines} lines");
        }
    }

    #[test]
    fn every_page_gets_header_and_page_x_of_y() {
        let doc = doc_with_lines(130);
        let frame = Frame {
            title: "T".into(),
            header: "DOWNTIME COPY — data as of X — QEH".into(),
            subheader: "sub".into(),
            footer: "foot".into(),
        };
        let (pdf, pages) = doc.finish(&frame, 0);
        assert_eq!(pages, 3);
        assert!(pdf.starts_with(b"%PDF-1.4"));
    }
}
