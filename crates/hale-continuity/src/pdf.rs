//! A minimal PDF 1.4 writer: A4 pages of text and rules in the standard Type 1
//! fonts Helvetica and Helvetica-Bold with WinAnsiEncoding.
//!
//! Standard fonts need no embedding (every viewer and printer has them), and
//! WinAnsiEncoding is one byte per glyph, so text is measured with the AFM
//! widths in [`crate::afm`] and extracted by `pdftotext` as ordinary text.
//! Characters WinAnsi cannot show are folded to a close Latin letter (`ł` to
//! `l`) or shown as `?`; the CSV files keep the original UTF-8.
//!
//! Public so that other Hale documents reuse it (hale-notify's patient letters).

use crate::afm;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::Write;

/// A4 in points (1/72 inch): 210 mm x 297 mm.
pub const A4_SHORT_PT: f32 = 595.28;
pub const A4_LONG_PT: f32 = 841.89;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Font {
    Regular,
    Bold,
}

impl Font {
    fn widths(self) -> &'static [u16; 224] {
        match self {
            Font::Regular => &afm::HELVETICA,
            Font::Bold => &afm::HELVETICA_BOLD,
        }
    }

    fn resource(self) -> &'static str {
        match self {
            Font::Regular => "F1",
            Font::Bold => "F2",
        }
    }
}

/// Width in points of WinAnsi `bytes` set in `font` at `size_pt`.
pub fn text_width_pt(bytes: &[u8], font: Font, size_pt: f32) -> f32 {
    let w = font.widths();
    let units: u32 = bytes
        .iter()
        .map(|&b| if b >= 32 { u32::from(w[usize::from(b) - 32]) } else { 0 })
        .sum();
    units as f32 * size_pt / 1000.0
}

/// WinAnsi codes 0x80..=0x9F and the Unicode characters they show.
const WIN_ANSI_HIGH: &[(char, u8)] = &[
    ('€', 0x80),
    ('‚', 0x82),
    ('ƒ', 0x83),
    ('„', 0x84),
    ('…', 0x85),
    ('†', 0x86),
    ('‡', 0x87),
    ('ˆ', 0x88),
    ('‰', 0x89),
    ('Š', 0x8A),
    ('‹', 0x8B),
    ('Œ', 0x8C),
    ('Ž', 0x8E),
    ('‘', 0x91),
    ('’', 0x92),
    ('“', 0x93),
    ('”', 0x94),
    ('•', 0x95),
    ('–', 0x96),
    ('—', 0x97),
    ('˜', 0x98),
    ('™', 0x99),
    ('š', 0x9A),
    ('›', 0x9B),
    ('œ', 0x9C),
    ('ž', 0x9E),
    ('Ÿ', 0x9F),
];

/// Base letters of U+0100..=U+017F (Latin Extended-A), for the characters
/// WinAnsi lacks: `ł` shows as `l`, `ő` as `o`.
const LATIN_EXT_A_BASE: &[u8; 128] = b"AaAaAaCcCcCcCcDdDdEeEeEeEeEeGgGgGgGgHhHhIiIiIiIiIiIiJjKkkLlLlLlL\
lLlNnNnNnnNnOoOoOoOoRrRrRrSsSsSsSsTtTtTtUuUuUuUuUuUuWwYyYZzZzZzs";

/// One character as a WinAnsi byte, folding what WinAnsi lacks.
fn win_ansi_byte(c: char) -> Option<u8> {
    let u = c as u32;
    match u {
        0x20..=0x7E | 0xA0..=0xFF => Some(u as u8),
        // Tabs, newlines and other controls become spaces.
        0..=0x1F | 0x7F..=0x9F => Some(b' '),
        // Combining marks (a decomposed "e" + acute): the base letter is already out.
        0x0300..=0x036F => None,
        _ => {
            if let Some(&(_, b)) = WIN_ANSI_HIGH.iter().find(|(ch, _)| *ch == c) {
                return Some(b);
            }
            Some(match u {
                0x0100..=0x017F => LATIN_EXT_A_BASE[(u - 0x100) as usize],
                0x0218 => b'S',
                0x0219 => b's',
                0x021A => b'T',
                0x021B => b't',
                // Modifier apostrophes and primes.
                0x02BB..=0x02BC | 0x2032 => b'\'',
                0x2010..=0x2012 | 0x2212 => b'-',
                0x2000..=0x200A | 0x202F => b' ',
                0x200B..=0x200D | 0xFEFF => return None,
                _ => b'?',
            })
        }
    }
}

/// Text as WinAnsi bytes: Latin-1 and the WinAnsi extras as themselves,
/// other Latin letters as their base letter, anything else as `?`.
pub fn win_ansi(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match c {
            // Symbols common in clinical text that WinAnsi lacks, spelt out.
            '≥' => out.extend_from_slice(b">="),
            '≤' => out.extend_from_slice(b"<="),
            '≠' => out.extend_from_slice(b"!="),
            '→' => out.extend_from_slice(b"->"),
            '←' => out.extend_from_slice(b"<-"),
            _ => out.extend(win_ansi_byte(c)),
        }
    }
    out
}

/// Bytes inside a PDF literal string `( )`: backslash, parentheses and every
/// byte outside printable ASCII escaped, so the file body stays 7-bit.
pub fn escape_literal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'(' => out.push_str("\\("),
            b')' => out.push_str("\\)"),
            0x20..=0x7E => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

/// One drawing operation on a page. Coordinates in points from the bottom left.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Text {
        x: f32,
        y: f32,
        font: Font,
        size_pt: f32,
        bytes: Vec<u8>,
    },
    Line {
        x1: f32,
        y1: f32,
        x2: f32,
        y2: f32,
        width_pt: f32,
    },
    /// A filled rectangle in grey level `gray` (0 black, 1 white).
    Fill { x: f32, y: f32, w: f32, h: f32, gray: f32 },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub ops: Vec<Op>,
}

/// Page orientation (both A4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orientation {
    Portrait,
    Landscape,
}

impl Orientation {
    pub fn size_pt(self) -> (f32, f32) {
        match self {
            Orientation::Portrait => (A4_SHORT_PT, A4_LONG_PT),
            Orientation::Landscape => (A4_LONG_PT, A4_SHORT_PT),
        }
    }
}

/// A number the way PDF wants it: at most two decimals, no exponent.
fn num(v: f32) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn content_stream(page: &Page) -> String {
    let mut s = String::with_capacity(page.ops.len() * 48);
    for op in &page.ops {
        match op {
            Op::Text {
                x,
                y,
                font,
                size_pt,
                bytes,
            } => {
                s.push_str(&format!(
                    "BT /{} {} Tf {} {} Td ({}) Tj ET\n",
                    font.resource(),
                    num(*size_pt),
                    num(*x),
                    num(*y),
                    escape_literal(bytes)
                ));
            }
            Op::Line {
                x1,
                y1,
                x2,
                y2,
                width_pt,
            } => {
                s.push_str(&format!(
                    "{} w {} {} m {} {} l S\n",
                    num(*width_pt),
                    num(*x1),
                    num(*y1),
                    num(*x2),
                    num(*y2)
                ));
            }
            Op::Fill { x, y, w, h, gray } => {
                s.push_str(&format!(
                    "{} g {} {} {} {} re f 0 g\n",
                    num(*gray),
                    num(*x),
                    num(*y),
                    num(*w),
                    num(*h)
                ));
            }
        }
    }
    s
}

/// ASCII-only PDF text string for the document information dictionary.
fn info_string(s: &str) -> String {
    let ascii: Vec<u8> = win_ansi(s)
        .into_iter()
        .map(|b| if b.is_ascii() { b } else { b'?' })
        .collect();
    escape_literal(&ascii)
}

/// Document metadata.
pub struct DocInfo<'a> {
    pub title: &'a str,
    /// `D:YYYYMMDDHHmmSSZ`.
    pub creation_date: &'a str,
}

/// Serialise `pages` as a complete PDF file. Content streams are
/// zlib-compressed (`/FlateDecode`) when `compress` is set.
pub fn write_pdf(info: &DocInfo<'_>, orientation: Orientation, pages: &[Page], compress: bool) -> Vec<u8> {
    write_pdf_with_producer(info, "Hale downtime pack", orientation, pages, compress)
}

/// [`write_pdf`] with another `/Producer` in the document information
/// (other Hale documents built with this writer, such as patient letters).
pub fn write_pdf_with_producer(
    info: &DocInfo<'_>,
    producer: &str,
    orientation: Orientation,
    pages: &[Page],
    compress: bool,
) -> Vec<u8> {
    let (w, h) = orientation.size_pt();
    // Objects: 1 catalog, 2 page tree, 3 Helvetica, 4 Helvetica-Bold, 5 info,
    // then a page object and its content stream for each page.
    let n_objects = 5 + 2 * pages.len();
    let mut out: Vec<u8> = Vec::with_capacity(4096 + pages.len() * 4096);
    let mut offsets = vec![0usize; n_objects + 1];
    out.extend_from_slice(b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n");

    let mut object = |out: &mut Vec<u8>, id: usize, body: &[u8]| {
        offsets[id] = out.len();
        out.extend_from_slice(format!("{id} 0 obj\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    };

    object(&mut out, 1, b"<< /Type /Catalog /Pages 2 0 R >>");
    let kids: Vec<String> = (0..pages.len()).map(|i| format!("{} 0 R", 6 + 2 * i)).collect();
    object(
        &mut out,
        2,
        format!(
            "<< /Type /Pages /Count {} /Kids [{}] /MediaBox [0 0 {} {}] \
             /Resources << /Font << /F1 3 0 R /F2 4 0 R >> /ProcSet [/PDF /Text] >> >>",
            pages.len(),
            kids.join(" "),
            num(w),
            num(h)
        )
        .as_bytes(),
    );
    for (id, name) in [(3, "Helvetica"), (4, "Helvetica-Bold")] {
        object(
            &mut out,
            id,
            format!("<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>").as_bytes(),
        );
    }
    object(
        &mut out,
        5,
        format!(
            "<< /Title ({}) /Producer ({}) /CreationDate ({}) >>",
            info_string(info.title),
            info_string(producer),
            info_string(info.creation_date)
        )
        .as_bytes(),
    );
    for (i, page) in pages.iter().enumerate() {
        let page_id = 6 + 2 * i;
        let content_id = page_id + 1;
        object(
            &mut out,
            page_id,
            format!("<< /Type /Page /Parent 2 0 R /Contents {content_id} 0 R >>").as_bytes(),
        );
        let text = content_stream(page);
        let (data, filter) = if compress {
            let mut z = ZlibEncoder::new(Vec::with_capacity(text.len() / 3), Compression::default());
            z.write_all(text.as_bytes()).expect("writing to a Vec cannot fail");
            (
                z.finish().expect("writing to a Vec cannot fail"),
                " /Filter /FlateDecode",
            )
        } else {
            (text.into_bytes(), "")
        };
        let mut body = format!("<< /Length {}{filter} >>\nstream\n", data.len()).into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\nendstream");
        object(&mut out, content_id, &body);
    }

    let xref_at = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", n_objects + 1).as_bytes());
    for off in &offsets[1..] {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R /Info 5 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
            n_objects + 1
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_encoding(input: &str, want: &[u8]) {
        assert_eq!(win_ansi(input), want, "win_ansi({input:?})");
    }

    #[test]
    fn win_ansi_cases() {
        check_encoding("Ada Okafor", b"Ada Okafor");
        check_encoding("DOWNTIME COPY — data", b"DOWNTIME COPY \x97 data");
        check_encoding("Zoë Brontë", b"Zo\xEB Bront\xEB");
        check_encoding("Siobhán Ó Súilleabháin", b"Siobh\xE1n \xD3 S\xFAilleabh\xE1in");
        check_encoding("Łukasz Wąsik", b"Lukasz Wasik");
        check_encoding("Şükrü Öztürk", b"S\xFCkr\xFC \xD6zt\xFCrk");
        check_encoding("Ștefan Țurcanu", b"Stefan Turcanu");
        check_encoding("Dvořák", b"Dvor\xE1k");
        check_encoding("Šimon Žák", b"\x8Aimon \x8E\xE1k");
        check_encoding("e\u{301}", b"e");
        check_encoding("O’Neill “Jim”", b"O\x92Neill \x93Jim\x94");
        check_encoding("line\nbreak\ttab", b"line break tab");
        check_encoding("王小明", b"???");
        check_encoding("€5 • 10–12", b"\x805 \x95 10\x9612");
        check_encoding("zero\u{200B}width", b"zerowidth");
        check_encoding("eGFR ≥ 90, K+ ≤ 5.3 → ok", b"eGFR >= 90, K+ <= 5.3 -> ok");
    }

    #[track_caller]
    fn check_escape(input: &[u8], want: &str) {
        assert_eq!(escape_literal(input), want, "escape_literal({input:?})");
    }

    #[test]
    fn literal_escaping_cases() {
        check_escape(b"plain", "plain");
        check_escape(b"(a) \\ b", "\\(a\\) \\\\ b");
        check_escape(b"\x97", "\\227");
        check_escape(b"caf\xE9", "caf\\351");
        check_escape(b"\x0A", "\\012");
    }

    #[track_caller]
    fn check_width(text: &str, font: Font, size: f32, want: f32) {
        let got = text_width_pt(&win_ansi(text), font, size);
        assert!(
            (got - want).abs() < 0.01,
            "width of {text:?} {font:?} {size}: {got} != {want}"
        );
    }

    #[test]
    fn width_cases() {
        check_width("", Font::Regular, 10.0, 0.0);
        // 'A' is 667 units in Helvetica, 722 in Helvetica-Bold.
        check_width("A", Font::Regular, 10.0, 6.67);
        check_width("A", Font::Bold, 10.0, 7.22);
        check_width("il", Font::Regular, 10.0, 4.44);
        check_width("—", Font::Regular, 12.0, 12.0);
        check_width("999 123 4567", Font::Regular, 10.0, 61.16);
        check_width("é", Font::Regular, 10.0, 5.56);
    }

    #[test]
    fn numbers_are_short() {
        for (v, want) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (12.345, "12.35"),
            (-0.001, "0"),
            (841.89, "841.89"),
        ] {
            assert_eq!(num(v), want, "num({v})");
        }
    }

    #[test]
    fn pdf_structure_has_xref_offsets_that_point_at_objects() {
        let page = Page {
            ops: vec![Op::Text {
                x: 10.0,
                y: 20.0,
                font: Font::Bold,
                size_pt: 12.0,
                bytes: win_ansi("Hello (world) — ok"),
            }],
        };
        let info = DocInfo {
            title: "t",
            creation_date: "D:20261123080000Z",
        };
        let pdf = write_pdf(&info, Orientation::Portrait, &[page.clone(), page], false);
        // One ASCII char per byte, so string offsets are byte offsets.
        let text: String = pdf
            .iter()
            .map(|&b| if b.is_ascii() { b as char } else { '?' })
            .collect();
        assert!(text.starts_with("%PDF-1.4"));
        assert!(text.contains("(Hello \\(world\\) \\227 ok) Tj"));
        let xref_at: usize = text
            .rsplit("startxref\n")
            .next()
            .and_then(|t| t.lines().next())
            .and_then(|l| l.parse().ok())
            .expect("startxref");
        assert!(
            text[xref_at..].starts_with("xref\n0 10\n"),
            "{:?}",
            &text[xref_at..xref_at + 12]
        );
        for (i, line) in text[xref_at..].lines().skip(3).take(9).enumerate() {
            let off: usize = line[..10].parse().expect("offset");
            assert!(
                text[off..].starts_with(&format!("{} 0 obj", i + 1)),
                "xref entry {} points at {:?}",
                i + 1,
                &text[off..off + 12]
            );
        }
    }
}
