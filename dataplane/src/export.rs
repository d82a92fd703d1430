//! Exports: a query result written as CSV or JSON Lines with the redaction preset applied, then
//! scanned again: zero findings earn the PASS badge. The same input and preset give the same
//! bytes. An export of a table is streamed: each row is redacted, written, hashed and scanned as
//! the query yields it, into any `Write` (the service's is a temporary file, `to_temp_file`),
//! so that no result is held whole in memory; the file's size is capped as it grows.

use crate::sandbox::{Limits, QueryError, QueryResult, Streamed, Table};
use domain::pii::{self, Detector};
use domain::preset::ColumnAction;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/jsonl",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Badge {
    Pass,
    Fail,
}

pub use domain::preset::Rules;

/// Apply a column's rule (or the free-text rule) to one value. `None` stays `None`.
fn redact(v: &Value, action: Option<&ColumnAction>, rules: &Rules, key: &[u8]) -> Value {
    let text = match v {
        Value::Null => return Value::Null,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let scrub_text = |t: &str| {
        let s = pii::scrub(t, &rules.text.detectors, rules.text.method, key);
        if s == t { v.clone() } else { Value::String(s) }
    };
    match action {
        None => scrub_text(&text),
        Some(ColumnAction::Keep) => v.clone(),
        Some(ColumnAction::Drop) => Value::Null,
        Some(ColumnAction::Mask) => Value::String("*".repeat(text.chars().count())),
        Some(ColumnAction::Hash) => Value::String(pii::keyed_hash(key, &text)),
        Some(ColumnAction::Truncate { length }) => {
            Value::String(text.chars().take(*length).collect())
        }
        Some(ColumnAction::Generalize { bucket }) => {
            let b = text.as_bytes();
            let dated = b.len() >= 7
                && b[4] == b'-'
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[5..7].iter().all(u8::is_ascii_digit);
            if dated {
                Value::String(text[..7].to_owned())
            } else if let Some(n) = v.as_f64() {
                let size = bucket.unwrap_or(10) as f64;
                let floor = (n / size).floor() * size;
                if v.is_i64() || v.is_u64() {
                    Value::from(floor as i64)
                } else {
                    Value::from(floor)
                }
            } else {
                scrub_text(&text)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exported {
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub rows: u64,
    pub size: u64,
    pub sha256: String,
    pub badge: Badge,
    /// Findings left in the output, per detector (never the values).
    pub findings: BTreeMap<Detector, usize>,
    /// CSV cells written with a leading `'` because a spreadsheet would run them as a formula.
    pub formulas_neutralized: u64,
    /// Columns written whose names say they hold people's names, addresses or dates of birth,
    /// with no column rule: (column, kind). Any keeps the badge from PASS.
    pub withheld: Vec<(String, &'static str)>,
}

/// A CSV cell a spreadsheet would run as a formula (OWASP CSV injection: `=`, `+`, `-`, `@`, a
/// tab or a carriage return first) gets a leading `'`, which spreadsheets show and never run.
/// True when it did.
fn neutralize_formula(cell: &mut String) -> bool {
    let risky = cell
        .bytes()
        .next()
        .is_some_and(|b| matches!(b, b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r'));
    if risky {
        cell.insert(0, '\'');
    }
    risky
}

/// JSON keys for `columns`, unique: a repeated name gets `_2`, `_3`… (a query may name two columns
/// alike, and a JSON object may not hold a key twice).
fn unique_keys<'c>(columns: impl Iterator<Item = &'c String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    columns
        .map(|c| {
            let mut name = c.clone();
            let mut n = 1;
            while !seen.insert(name.clone()) {
                n += 1;
                name = format!("{c}_{n}");
            }
            name
        })
        .collect()
}

/// Apply only the column rules of `rules` to a whole table: dropped columns go, the others are
/// masked, hashed, truncated or generalized. A query is then run over this, so that renaming a
/// column in SQL (`SELECT ssn AS x`) cannot get around a rule on `ssn`.
pub fn redact_columns(result: &QueryResult, rules: &Rules, key: &[u8]) -> QueryResult {
    let actions: Vec<Option<&ColumnAction>> =
        result.columns.iter().map(|c| rules.rule_for(c)).collect();
    let kept: Vec<usize> = (0..result.columns.len())
        .filter(|i| actions[*i] != Some(&ColumnAction::Drop))
        .collect();
    let passthrough = Rules {
        columns: Vec::new(),
        text: domain::preset::TextRule {
            detectors: Vec::new(),
            method: domain::pii::Method::Replace,
        },
    };
    QueryResult {
        columns: kept.iter().map(|i| result.columns[*i].clone()).collect(),
        rows: result
            .rows
            .iter()
            .map(|row| {
                kept.iter()
                    .map(|i| match actions[*i] {
                        None => row[*i].clone(),
                        action => redact(&row[*i], action, &passthrough, key),
                    })
                    .collect()
            })
            .collect(),
        truncated: result.truncated,
    }
}

/// Apply `rules` (the hash method keyed by `key`), write `format`, scan the result, hash it.
pub fn export(result: &QueryResult, format: Format, rules: &Rules, key: &[u8]) -> Exported {
    let mut out = Vec::with_capacity(result.rows.len() * 64);
    let spec = Spec {
        format,
        rules,
        key,
        max_bytes: u64::MAX,
        ruled_upstream: None,
    };
    let mut w = RowWriter::new(&result.columns, spec, &mut out).expect("writing to memory");
    for row in &result.rows {
        w.row(row).expect("writing to memory");
    }
    let mut exported = w.finish().expect("writing to memory");
    exported.bytes = out;
    exported
}

/// Why a streamed export did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The query failed (see `QueryError` for its HTTP mapping).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The export would go past its row cap, its file-size cap, or one row past the memory cap
    /// (HTTP 422, `validation`; class `too_large`, charged by ADR 015). Nothing is kept.
    #[error("the export would exceed {max_rows} rows or {max_bytes} bytes")]
    TooLarge { max_rows: usize, max_bytes: u64 },
    /// Writing the file failed (HTTP 500).
    #[error("the export could not be written: {0}")]
    Io(#[from] std::io::Error),
}

/// How a streamed export is written: its format, its preset (the hash method keyed by `key`)
/// and the most bytes its file may take.
#[derive(Clone, Copy, Debug)]
pub struct Spec<'a> {
    pub format: Format,
    pub rules: &'a Rules,
    pub key: &'a [u8],
    pub max_bytes: u64,
    /// The column rules the data already went through (a redacted copy a query ran over);
    /// `None` when `rules` are applied here. A personal column (`pii::personal_column`) that no
    /// column rule covers keeps the export from PASS.
    pub ruled_upstream: Option<&'a Rules>,
}

/// Run `sql` over `table` and stream its rows through the preset into `out`, no more than
/// `limits.max_rows` rows and `spec.max_bytes` bytes: past either the export fails as
/// `TooLarge` (an export is never silently partial). `out` is flushed; the answer's `bytes` is
/// empty (the output is the file).
pub fn export_table<W: Write>(
    table: &Table,
    sql: &str,
    limits: Limits,
    spec: Spec<'_>,
    out: W,
) -> Result<Exported, ExportError> {
    let too_large = || ExportError::TooLarge {
        max_rows: limits.max_rows,
        max_bytes: spec.max_bytes,
    };
    // Both visitors share the writer: it is made from the columns, then fed the rows.
    let writer: RefCell<Option<RowWriter<'_, W>>> = RefCell::new(None);
    let failure: RefCell<Option<ExportError>> = RefCell::new(None);
    let streamed = table.for_each_row(
        sql,
        limits,
        |columns| match RowWriter::new(columns, spec, out) {
            Ok(w) => *writer.borrow_mut() = Some(w),
            Err(e) => *failure.borrow_mut() = Some(e),
        },
        |row| {
            let written = match writer.borrow_mut().as_mut() {
                Some(w) => w.row(&row),
                None => return ControlFlow::Break(()),
            };
            match written {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    *failure.borrow_mut() = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    )?;
    match failure.into_inner() {
        Some(ExportError::TooLarge { .. }) => return Err(too_large()),
        Some(e) => return Err(e),
        None => {}
    }
    if streamed == Streamed::Stopped {
        return Err(too_large());
    }
    match writer.into_inner() {
        Some(w) => w.finish(),
        None => Err(too_large()),
    }
}

/// `export_table` into a new temporary file in `dir`. The file is removed when the returned
/// handle is dropped, and at once on any failure: the caller keeps it as a blob, then drops it.
pub fn to_temp_file(
    dir: &Path,
    table: &Table,
    sql: &str,
    limits: Limits,
    spec: Spec<'_>,
) -> Result<(tempfile::NamedTempFile, Exported), ExportError> {
    let file = tempfile::Builder::new()
        .prefix("tenantry-export-")
        .tempfile_in(dir)?;
    let out = std::io::BufWriter::with_capacity(256 * 1024, file.as_file());
    let exported = export_table(table, sql, limits, spec, out)?;
    Ok((file, exported))
}

/// Writes rows as they come: redacts them, and counts, hashes and scans every byte written.
struct RowWriter<'a, W: Write> {
    out: Out<W>,
    actions: Vec<Option<&'a ColumnAction>>,
    kept: Vec<usize>,
    keys: Vec<String>,
    rules: &'a Rules,
    key: &'a [u8],
    rows: u64,
    line: Vec<u8>,
    formulas_neutralized: u64,
    withheld: Vec<(String, &'static str)>,
}

enum Out<W: Write> {
    Csv(Box<csv::Writer<Sink<W>>>),
    Jsonl(Sink<W>),
}

/// The output, with its running digest, size, cap and the output scan line by line.
struct Sink<W: Write> {
    out: W,
    hasher: Sha256,
    size: u64,
    max_bytes: u64,
    /// Set when a write would have gone past `max_bytes` (that write fails).
    too_large: bool,
    findings: BTreeMap<Detector, usize>,
    partial: Vec<u8>,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.size + bytes.len() as u64 > self.max_bytes {
            self.too_large = true;
            return Err(std::io::Error::other("the export's size cap"));
        }
        self.out.write_all(bytes)?;
        self.size += bytes.len() as u64;
        self.hasher.update(bytes);
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..i]);
            self.scan_line();
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Sink<W> {
    /// Scan the line written so far, as `scan_output` does.
    fn scan_line(&mut self) {
        let mut line = &self.partial[..];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        for f in pii::scan(&String::from_utf8_lossy(line), Detector::ALL) {
            *self.findings.entry(f.detector).or_default() += 1;
        }
        self.partial.clear();
    }

    /// A failed write's error: the cap, or the file's own.
    fn error(&self, e: std::io::Error) -> ExportError {
        if self.too_large {
            ExportError::TooLarge {
                max_rows: usize::MAX,
                max_bytes: self.max_bytes,
            }
        } else {
            ExportError::Io(e)
        }
    }
}

fn csv_error<W: Write>(w: &csv::Writer<Sink<W>>, e: csv::Error) -> ExportError {
    w.get_ref().error(std::io::Error::other(e))
}

impl<'a, W: Write> RowWriter<'a, W> {
    fn new(columns: &[String], spec: Spec<'a>, out: W) -> Result<Self, ExportError> {
        let actions: Vec<Option<&ColumnAction>> =
            columns.iter().map(|c| spec.rules.rule_for(c)).collect();
        let kept: Vec<usize> = (0..columns.len())
            .filter(|i| actions[*i] != Some(&ColumnAction::Drop))
            .collect();
        let ruled = spec.ruled_upstream.unwrap_or(spec.rules);
        let withheld: Vec<(String, &'static str)> = kept
            .iter()
            .map(|i| &columns[*i])
            .filter(|c| ruled.rule_for(c).is_none())
            .filter_map(|c| pii::personal_column(c).map(|kind| (c.clone(), kind)))
            .collect();
        let sink = Sink {
            out,
            hasher: Sha256::new(),
            size: 0,
            max_bytes: spec.max_bytes,
            too_large: false,
            findings: BTreeMap::new(),
            partial: Vec::new(),
        };
        let (out, keys, formulas_neutralized) = match spec.format {
            Format::Csv => {
                let mut csv = csv::WriterBuilder::new()
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_writer(sink);
                let mut neutralized = 0u64;
                let header: Vec<String> = kept
                    .iter()
                    .map(|i| {
                        let mut name = columns[*i].clone();
                        neutralized += u64::from(neutralize_formula(&mut name));
                        name
                    })
                    .collect();
                if let Err(e) = csv.write_record(&header) {
                    return Err(csv_error(&csv, e));
                }
                (Out::Csv(Box::new(csv)), Vec::new(), neutralized)
            }
            // Written by hand to keep the columns in their order.
            Format::Jsonl => (
                Out::Jsonl(sink),
                unique_keys(kept.iter().map(|i| &columns[*i]))
                    .iter()
                    .map(|k| serde_json::to_string(k).expect("strings serialize"))
                    .collect(),
                0,
            ),
        };
        Ok(Self {
            out,
            actions,
            kept,
            keys,
            rules: spec.rules,
            key: spec.key,
            rows: 0,
            line: Vec::with_capacity(1024),
            formulas_neutralized,
            withheld,
        })
    }

    fn row(&mut self, row: &[Value]) -> Result<(), ExportError> {
        self.rows += 1;
        let redacted = |i: usize| redact(&row[i], self.actions[i], self.rules, self.key);
        match &mut self.out {
            Out::Csv(csv) => {
                let mut neutralized = 0u64;
                let cells: Vec<String> = self
                    .kept
                    .iter()
                    .map(|i| match redacted(*i) {
                        Value::Null => String::new(),
                        Value::String(mut s) => {
                            neutralized += u64::from(neutralize_formula(&mut s));
                            s
                        }
                        other => other.to_string(),
                    })
                    .collect();
                self.formulas_neutralized += neutralized;
                match csv.write_record(&cells) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(csv_error(csv, e)),
                }
            }
            Out::Jsonl(sink) => {
                let line = &mut self.line;
                line.clear();
                line.push(b'{');
                for (k, (name, i)) in self.keys.iter().zip(&self.kept).enumerate() {
                    if k > 0 {
                        line.push(b',');
                    }
                    line.extend_from_slice(name.as_bytes());
                    line.push(b':');
                    serde_json::to_writer(&mut *line, &redacted(*i))
                        .map_err(std::io::Error::other)?;
                }
                line.extend_from_slice(b"}\n");
                sink.write_all(line).map_err(|e| sink.error(e))
            }
        }
    }

    fn finish(self) -> Result<Exported, ExportError> {
        let mut sink = match self.out {
            Out::Csv(mut csv) => {
                if let Err(e) = csv.flush() {
                    return Err(csv.get_ref().error(e));
                }
                csv.into_inner()
                    .map_err(|e| ExportError::Io(std::io::Error::other(e.to_string())))?
            }
            Out::Jsonl(sink) => sink,
        };
        if !sink.partial.is_empty() {
            sink.scan_line();
        }
        sink.out.flush()?;
        let findings = sink.findings;
        Ok(Exported {
            bytes: Vec::new(),
            rows: self.rows,
            size: sink.size,
            sha256: sink
                .hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            badge: if findings.is_empty() && self.withheld.is_empty() {
                Badge::Pass
            } else {
                Badge::Fail
            },
            findings,
            formulas_neutralized: self.formulas_neutralized,
            withheld: self.withheld,
        })
    }
}

/// Scan the written output with every detector, line by line.
pub fn scan_output(bytes: &[u8]) -> BTreeMap<Detector, usize> {
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(bytes).lines() {
        for f in pii::scan(line, Detector::ALL) {
            *counts.entry(f.detector).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::preset::ColumnRule;

    #[test]
    fn column_rules_apply_by_name_and_glob() {
        let r = QueryResult {
            columns: vec![
                "id".into(),
                "email_work".into(),
                "amount".into(),
                "day".into(),
                "name".into(),
                "secret".into(),
            ],
            rows: vec![vec![
                Value::from(7),
                Value::from("ada@example.com"),
                Value::from(1234),
                Value::from("2024-03-17"),
                Value::from("Ada Lovelace"),
                Value::from("x"),
            ]],
            truncated: false,
        };
        let rules = Rules {
            columns: vec![
                ColumnRule {
                    column: "email*".into(),
                    action: ColumnAction::Hash,
                },
                ColumnRule {
                    column: "amount".into(),
                    action: ColumnAction::Generalize { bucket: Some(100) },
                },
                ColumnRule {
                    column: "day".into(),
                    action: ColumnAction::Generalize { bucket: None },
                },
                ColumnRule {
                    column: "NAME".into(),
                    action: ColumnAction::Truncate { length: 3 },
                },
                ColumnRule {
                    column: "secret".into(),
                    action: ColumnAction::Drop,
                },
                ColumnRule {
                    column: "id".into(),
                    action: ColumnAction::Mask,
                },
            ],
            text: domain::preset::TextRule {
                detectors: Detector::ALL.to_vec(),
                method: domain::pii::Method::Replace,
            },
        };
        let e = export(&r, Format::Csv, &rules, b"k");
        let hash = pii::keyed_hash(b"k", "ada@example.com");
        assert_eq!(
            String::from_utf8(e.bytes).unwrap(),
            format!("id,email_work,amount,day,name\n*,{hash},1200,2024-03,Ada\n")
        );
        assert_eq!(e.badge, Badge::Pass);
        let keep = Rules {
            columns: vec![ColumnRule {
                column: "email_work".into(),
                action: ColumnAction::Keep,
            }],
            ..rules
        };
        let e = export(&r, Format::Jsonl, &keep, b"k");
        assert_eq!(
            e.badge,
            Badge::Fail,
            "a kept email is found by the output scan"
        );
        assert_eq!(e.findings.get(&Detector::Email), Some(&1));
    }

    #[test]
    fn formula_cells_are_neutralised_in_csv_and_jsonl_keys_are_never_repeated() {
        let r = QueryResult {
            columns: vec!["=cmd".into(), "n".into(), "n".into()],
            rows: vec![
                vec![
                    Value::from("=HYPERLINK(\"http://x\")"),
                    Value::from(-5),
                    Value::from("@SUM(A1)"),
                ],
                vec![Value::from("+1 more"), Value::from(3), Value::from("plain")],
                vec![Value::from("-2"), Value::Null, Value::from("\tindented")],
            ],
            truncated: false,
        };
        let rules = Rules::default_preset();
        let csv = export(&r, Format::Csv, &rules, b"k");
        let text = String::from_utf8(csv.bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "'=cmd,n,n");
        assert!(lines[1].starts_with("\"'=HYPERLINK("), "{text}");
        assert!(
            lines[1].ends_with(",-5,'@SUM(A1)"),
            "numbers stay numbers: {text}"
        );
        assert_eq!(lines[2], "'+1 more,3,plain");
        assert!(lines[3].starts_with("'-2,,"), "{text}");
        assert_eq!(csv.formulas_neutralized, 6, "{text}");
        // JSON Lines: values as they are (JSON is not run by spreadsheets), keys made unique.
        let jsonl = export(&r, Format::Jsonl, &rules, b"k");
        let first = String::from_utf8(jsonl.bytes.clone()).unwrap();
        let first = first.lines().next().unwrap().to_owned();
        assert!(first.starts_with(r#"{"=cmd":"=HYPERLINK"#), "{first}");
        assert!(first.contains(r#""n":-5,"n_2":"@SUM(A1)""#), "{first}");
        assert_eq!(jsonl.formulas_neutralized, 0);
    }

    fn result() -> QueryResult {
        QueryResult {
            columns: vec!["id".into(), "email".into(), "note".into()],
            rows: vec![
                vec![
                    Value::from(1),
                    Value::from("ada@example.com"),
                    Value::from("call +44 20 7946 0958"),
                ],
                vec![
                    Value::from(2),
                    Value::Null,
                    Value::from("nothing, here \"quoted\""),
                ],
            ],
            truncated: false,
        }
    }

    #[test]
    fn the_default_preset_earns_pass_and_output_is_byte_identical() {
        let a = export(&result(), Format::Csv, &Rules::default_preset(), b"t");
        let b = export(&result(), Format::Csv, &Rules::default_preset(), b"t");
        assert_eq!(a, b);
        assert_eq!(a.badge, Badge::Pass);
        assert_eq!(
            String::from_utf8(a.bytes).unwrap(),
            "id,email,note\n1,[email],call [phone]\n2,,\"nothing, here \"\"quoted\"\"\"\n"
        );
        let j = export(&result(), Format::Jsonl, &Rules::default_preset(), b"t");
        assert_eq!(
            String::from_utf8(j.bytes).unwrap(),
            "{\"id\":1,\"email\":\"[email]\",\"note\":\"call [phone]\"}\n{\"id\":2,\"email\":null,\"note\":\"nothing, here \\\"quoted\\\"\"}\n"
        );
    }

    #[test]
    fn a_preset_that_leaves_pii_earns_fail_with_counts_only() {
        let only_phones = Rules {
            columns: vec![],
            text: domain::preset::TextRule {
                detectors: vec![Detector::Phone],
                method: domain::pii::Method::Mask,
            },
        };
        let e = export(&result(), Format::Csv, &only_phones, b"t");
        assert_eq!(e.badge, Badge::Fail);
        assert_eq!(e.findings.get(&Detector::Email), Some(&1));
        assert!(
            !serde_json::to_string(&e)
                .unwrap()
                .contains("ada@example.com")
        );
    }

    fn wide_table(rows: usize) -> Table {
        let mut csv = String::from("id,email,note\n");
        for i in 0..rows {
            csv.push_str(&format!(
                "{i},user{i}@example.com,call +44 20 7946 0958 about {i}\n"
            ));
        }
        let d = crate::ingest::ingest(csv.as_bytes()).unwrap();
        Table::load(csv.as_bytes(), &d.columns).unwrap()
    }

    fn spec(format: Format, rules: &Rules, max_bytes: u64) -> Spec<'_> {
        Spec {
            format,
            rules,
            key: b"t",
            max_bytes,
            ruled_upstream: None,
        }
    }

    #[test]
    fn a_streamed_export_writes_the_same_bytes_digest_and_badge_as_one_built_in_memory() {
        let t = wide_table(500);
        let rules = Rules::default_preset();
        for format in [Format::Csv, Format::Jsonl] {
            let whole = t.query("SELECT * FROM data", Limits::default()).unwrap();
            let expected = export(&whole, format, &rules, b"t");
            let mut out = Vec::new();
            let streamed = export_table(
                &t,
                "SELECT * FROM data",
                Limits::default(),
                spec(format, &rules, u64::MAX),
                &mut out,
            )
            .unwrap();
            assert_eq!(out, expected.bytes, "{format:?}");
            assert_eq!(
                Exported {
                    bytes: expected.bytes.clone(),
                    ..streamed
                },
                expected
            );
        }
    }

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn an_exports_temp_file_is_removed_after_success_and_after_failure() {
        let dir = tempfile::tempdir().unwrap();
        let t = wide_table(200);
        let rules = Rules::default_preset();
        let (file, exported) = to_temp_file(
            dir.path(),
            &t,
            "SELECT * FROM data",
            Limits::default(),
            spec(Format::Csv, &rules, 1 << 20),
        )
        .unwrap();
        assert_eq!(exported.rows, 200);
        assert_eq!(std::fs::metadata(file.path()).unwrap().len(), exported.size);
        assert_eq!(files_in(dir.path()), 1);
        drop(file);
        assert_eq!(files_in(dir.path()), 0, "removed once kept");

        // Past the size cap, past the row cap, and a failed query: nothing is left behind.
        let too_big = to_temp_file(
            dir.path(),
            &t,
            "SELECT * FROM data",
            Limits::default(),
            spec(Format::Jsonl, &rules, 1_000),
        );
        assert!(matches!(
            too_big,
            Err(ExportError::TooLarge {
                max_bytes: 1_000,
                ..
            })
        ));
        let too_many = to_temp_file(
            dir.path(),
            &t,
            "SELECT * FROM data",
            Limits {
                max_rows: 10,
                ..Limits::default()
            },
            spec(Format::Csv, &rules, 1 << 20),
        );
        assert!(matches!(
            too_many,
            Err(ExportError::TooLarge { max_rows: 10, .. })
        ));
        let invalid = to_temp_file(
            dir.path(),
            &t,
            "SELECT nope FROM data",
            Limits::default(),
            spec(Format::Csv, &rules, 1 << 20),
        );
        assert!(matches!(
            invalid,
            Err(ExportError::Query(QueryError::Invalid(_)))
        ));
        assert_eq!(files_in(dir.path()), 0);
    }
}
