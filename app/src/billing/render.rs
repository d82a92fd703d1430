//! An invoice as CSV and as a one-page PDF (Helvetica, `pdf-writer`): the tenant, the period, each
//! line, the total and the currency, with the same figures as the JSON.

use domain::billing::{Invoice, InvoiceLine, LineKind, format_minor};
use pdf_writer::{Content, Name, Pdf, Rect, Ref, Str};

fn kind(k: LineKind) -> &'static str {
    match k {
        LineKind::BaseFee => "base_fee",
        LineKind::ProrationCredit => "proration_credit",
        LineKind::ProratedFee => "prorated_fee",
        LineKind::Overage => "overage",
    }
}

fn csv_field(s: &str) -> String {
    // A cell a spreadsheet would run as a formula is quoted with a leading apostrophe.
    let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `kind,description,quantity,unit_price,registry_version,amount,currency` then a total row.
pub fn csv(invoice: &Invoice) -> String {
    let mut out =
        String::from("kind,description,quantity,unit_price,registry_version,amount,currency\n");
    for l in &invoice.lines {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            kind(l.kind),
            csv_field(&l.description),
            l.quantity,
            l.unit_price,
            l.registry_version,
            format_minor(l.amount),
            invoice.currency
        ));
    }
    out.push_str(&format!(
        "total,,,,,{},{}\n",
        format_minor(invoice.total),
        invoice.currency
    ));
    out
}

/// Printable ASCII only (the standard Helvetica encoding); anything else becomes `?`.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn line_text(l: &InvoiceLine) -> String {
    format!(
        "{}  x{}  @ {}  = {}",
        l.description,
        l.quantity,
        l.unit_price,
        format_minor(l.amount)
    )
}

/// A one-page PDF (lines past the page are summarized, the total is always printed).
pub fn pdf(invoice: &Invoice, tenant_name: &str, title: &str, mode: &str) -> Vec<u8> {
    let (catalog, tree, page, font, content_id) = (
        Ref::new(1),
        Ref::new(2),
        Ref::new(3),
        Ref::new(4),
        Ref::new(5),
    );
    let f1 = Name(b"F1");
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids([page]).count(1);
    let mut p = pdf.page(page);
    p.media_box(Rect::new(0.0, 0.0, 595.0, 842.0));
    p.parent(tree);
    p.contents(content_id);
    p.resources().fonts().pair(f1, font);
    drop(p);
    pdf.type1_font(font).base_font(Name(b"Helvetica"));
    let mut rows: Vec<(f32, String)> = vec![
        (16.0, ascii(title)),
        (11.0, format!("Tenant: {}", ascii(tenant_name))),
        (11.0, format!("Tenant id: {}", invoice.tenant)),
        (11.0, format!("Period: {}", invoice.period)),
        (11.0, format!("Billing mode: {mode}")),
        (11.0, format!("Currency: {}", invoice.currency)),
        (11.0, String::new()),
    ];
    let max_lines = 50;
    for l in invoice.lines.iter().take(max_lines) {
        rows.push((9.0, ascii(&line_text(l))));
    }
    if invoice.lines.len() > max_lines {
        rows.push((
            9.0,
            format!("... {} more lines", invoice.lines.len() - max_lines),
        ));
    }
    rows.push((11.0, String::new()));
    rows.push((
        13.0,
        format!(
            "Total: {} {}",
            format_minor(invoice.total),
            invoice.currency
        ),
    ));
    let mut c = Content::new();
    let mut y = 800.0;
    for (size, text) in rows {
        y -= size * 1.6;
        c.begin_text();
        c.set_font(f1, size);
        c.next_line(50.0, y);
        c.show(Str(text.as_bytes()));
        c.end_text();
    }
    let bytes = c.finish();
    pdf.stream(content_id, &bytes);
    pdf.finish()
}
