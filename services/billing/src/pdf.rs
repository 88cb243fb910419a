//! An invoice as a PDF (A4, Helvetica — one of the standard fonts every reader has, so
//! nothing is embedded), written with `pdf-writer`.

use crate::invoice::Invoice;
use crate::price::format;
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

const WIDTH: f32 = 595.0;
const HEIGHT: f32 = 842.0;
const MARGIN: f32 = 56.0;
const ROW: f32 = 16.0;
/// Longest item text on a line, in characters.
const ITEM_CHARS: usize = 64;

/// Text in WinAnsi (Windows-1252), the standard fonts' encoding here: what it cannot
/// show becomes `?`.
fn ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '€' => 0x80,
            '–' => 0x96,
            '—' => 0x97,
            '·' => 0xB7,
            c if (c as u32) >= 0xA0 && (c as u32) <= 0xFF => c as u32 as u8,
            _ => b'?',
        })
        .collect()
}

/// `s` cut to `n` characters (with an ellipsis when cut).
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// A page's text, line by line from the top.
struct Page {
    content: Content,
    y: f32,
}

impl Page {
    fn new() -> Page {
        Page { content: Content::new(), y: HEIGHT - MARGIN }
    }

    fn text(&mut self, x: f32, size: f32, bold: bool, s: &str) {
        let font = if bold { Name(b"F2") } else { Name(b"F1") };
        let bytes = ansi(s);
        self.content.begin_text();
        self.content.set_font(font, size);
        self.content.next_line(x, self.y);
        self.content.show(Str(&bytes));
        self.content.end_text();
    }

    /// Text ending at `right` (widths estimated: Helvetica's average is about half its size).
    fn right(&mut self, right: f32, size: f32, bold: bool, s: &str) {
        let width = s.chars().count() as f32 * size * 0.53;
        self.text(right - width, size, bold, s);
    }

    fn rule(&mut self) {
        self.content.set_line_width(0.5);
        self.content.move_to(MARGIN, self.y + 4.0);
        self.content.line_to(WIDTH - MARGIN, self.y + 4.0);
        self.content.stroke();
    }
}

impl Invoice {
    /// The invoice as a PDF document.
    pub fn pdf(&self) -> Vec<u8> {
        let money = |a: i64| format(a, &self.draft.currency);
        let date = |s: u64| micro_core::time::utc(s * 1000)[..10].to_string();
        let mut pages: Vec<Page> = Vec::new();
        let mut p = Page::new();
        p.text(MARGIN, 20.0, true, &format!("Invoice {}", self.number));
        p.y -= 28.0;
        for line in [
            format!("Namespace {} - period {}", self.namespace, self.period),
            format!("Issued {} - due {}", date(self.issued), date(self.due)),
            format!(
                "Billed to {}{}",
                if self.email.is_empty() { "the namespace's owners" } else { &self.email },
                if self.country.is_empty() { String::new() } else { format!(" ({})", self.country) }
            ),
        ] {
            p.text(MARGIN, 10.0, false, &line);
            p.y -= ROW;
        }
        p.y -= ROW;
        let header = |p: &mut Page| {
            p.text(MARGIN, 10.0, true, "Item");
            p.right(WIDTH - MARGIN - 150.0, 10.0, true, "Amount");
            p.right(WIDTH - MARGIN - 70.0, 10.0, true, "Tax rate");
            p.right(WIDTH - MARGIN, 10.0, true, "Tax");
            p.y -= 6.0;
            p.rule();
            p.y -= ROW;
        };
        header(&mut p);
        for l in &self.draft.lines {
            if p.y < MARGIN + 6.0 * ROW {
                pages.push(std::mem::replace(&mut p, Page::new()));
                header(&mut p);
            }
            p.text(MARGIN, 9.0, false, &cut(&l.description, ITEM_CHARS));
            p.right(WIDTH - MARGIN - 150.0, 9.0, false, &money(l.amount));
            p.right(WIDTH - MARGIN - 70.0, 9.0, false, &format!("{}.{:02}%", l.tax_rate / 100, l.tax_rate % 100));
            p.right(WIDTH - MARGIN, 9.0, false, &money(l.tax));
            p.y -= ROW;
        }
        p.rule();
        p.y -= 4.0;
        for (label, amount, bold) in [
            ("Subtotal", self.draft.subtotal, false),
            ("Tax", self.draft.tax, false),
            ("Total", self.draft.total, true),
            ("Credit applied", -self.draft.credit_applied, false),
            ("Amount due", self.draft.amount_due, true),
        ] {
            p.text(WIDTH - MARGIN - 220.0, 10.0, bold, label);
            p.right(WIDTH - MARGIN, 10.0, bold, &money(amount));
            p.y -= ROW;
        }
        pages.push(p);

        let mut pdf = Pdf::new();
        let (catalog, tree, info, regular, bold) = (Ref::new(1), Ref::new(2), Ref::new(3), Ref::new(4), Ref::new(5));
        let first = 6;
        let ids: Vec<(Ref, Ref)> =
            (0..pages.len() as i32).map(|i| (Ref::new(first + 2 * i), Ref::new(first + 2 * i + 1))).collect();
        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree).kids(ids.iter().map(|(page, _)| *page)).count(ids.len() as i32);
        pdf.document_info(info).title(TextStr(&format!("Invoice {}", self.number)));
        pdf.type1_font(regular).base_font(Name(b"Helvetica")).encoding_predefined(Name(b"WinAnsiEncoding"));
        pdf.type1_font(bold).base_font(Name(b"Helvetica-Bold")).encoding_predefined(Name(b"WinAnsiEncoding"));
        for (page, (page_id, content_id)) in pages.into_iter().zip(&ids) {
            let mut pg = pdf.page(*page_id);
            pg.media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT));
            pg.parent(tree);
            pg.contents(*content_id);
            {
                let mut resources = pg.resources();
                let mut fonts = resources.fonts();
                fonts.pair(Name(b"F1"), regular);
                fonts.pair(Name(b"F2"), bold);
            }
            pg.finish();
            let data = page.content.finish();
            pdf.stream(*content_id, &data);
        }
        pdf.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winansi_and_cutting() {
        assert_eq!(ansi("€1 · ok ✓"), vec![0x80, b'1', b' ', 0xB7, b' ', b'o', b'k', b' ', b'?']);
        assert_eq!(cut("abcdef", 5), "ab...");
        assert_eq!(cut("abc", 5), "abc");
    }
}
