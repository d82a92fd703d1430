//! CSV ingestion: a header row, one record per line, column types inferred from the values,
//! every encoding or shape error reported with its line number.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The types a column can be inferred as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Integer,
    Float,
    Boolean,
    Date,
    Timestamp,
    Text,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

/// What an upload holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingested {
    pub columns: Vec<Column>,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

pub const MAX_COLUMNS: usize = 500;
pub const MAX_COLUMN_NAME: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the file is empty: a header row is required")]
    Empty,
    #[error("line {line}: the file is not UTF-8 text")]
    Encoding { line: u64 },
    #[error("line {line}: expected {expected} fields like the header, found {found}")]
    Shape {
        line: u64,
        expected: u64,
        found: u64,
    },
    #[error("line 1: column {index} has an empty name")]
    EmptyColumnName { index: usize },
    #[error("line 1: column {name:?} appears twice (names are case-insensitive)")]
    DuplicateColumn { name: String },
    #[error(
        "line 1: column names must be at most {MAX_COLUMN_NAME} characters without control characters"
    )]
    BadColumnName { index: usize },
    #[error("line 1: at most {MAX_COLUMNS} columns")]
    TooManyColumns,
    #[error("line {line}: {message}")]
    Malformed { line: u64, message: String },
}

/// Parse and describe a CSV file held in memory.
pub fn ingest(bytes: &[u8]) -> Result<Ingested, IngestError> {
    let sha256 = hex(&Sha256::digest(bytes));
    let (header, records) = parse(bytes)?;
    let mut inference: Vec<Inference> = vec![Inference::default(); header.len()];
    let mut rows = 0u64;
    for record in records {
        let record = record?;
        rows += 1;
        for (i, field) in record.iter().enumerate() {
            inference[i].see(field);
        }
    }
    Ok(Ingested {
        columns: header
            .into_iter()
            .zip(inference)
            .map(|(name, inf)| Column {
                name,
                kind: inf.kind(),
            })
            .collect(),
        rows,
        bytes: bytes.len() as u64,
        sha256,
    })
}

/// The header and an iterator over the records (each checked for shape and encoding).
pub fn parse(
    bytes: &[u8],
) -> Result<
    (
        Vec<String>,
        impl Iterator<Item = Result<csv::StringRecord, IngestError>> + '_,
    ),
    IngestError,
> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(IngestError::Empty);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let header = reader.headers().map_err(map_error)?.clone();
    if header.len() > MAX_COLUMNS {
        return Err(IngestError::TooManyColumns);
    }
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for (index, raw) in header.iter().enumerate() {
        let name = raw.trim();
        if name.is_empty() {
            return Err(IngestError::EmptyColumnName { index: index + 1 });
        }
        if name.chars().count() > MAX_COLUMN_NAME || name.chars().any(char::is_control) {
            return Err(IngestError::BadColumnName { index: index + 1 });
        }
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(IngestError::DuplicateColumn {
                name: name.to_owned(),
            });
        }
        names.push(name.to_owned());
    }
    let records = reader.into_records().map(|r| r.map_err(map_error));
    Ok((names, records))
}

fn map_error(e: csv::Error) -> IngestError {
    let line = e.position().map_or(0, |p| p.line());
    match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => IngestError::Encoding {
            line: pos.as_ref().map_or(line, |p| p.line()),
        },
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => IngestError::Shape {
            line: pos.as_ref().map_or(line, |p| p.line()),
            expected: *expected_len,
            found: *len,
        },
        _ => IngestError::Malformed {
            line,
            message: e.to_string(),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which types every non-empty value of a column so far fits.
#[derive(Clone, Debug)]
struct Inference {
    integer: bool,
    float: bool,
    boolean: bool,
    date: bool,
    timestamp: bool,
    seen: bool,
}

impl Default for Inference {
    fn default() -> Self {
        Self {
            integer: true,
            float: true,
            boolean: true,
            date: true,
            timestamp: true,
            seen: false,
        }
    }
}

impl Inference {
    fn see(&mut self, raw: &str) {
        let v = raw.trim();
        if v.is_empty() {
            return;
        }
        self.seen = true;
        if self.integer {
            self.integer = parse_integer(v).is_some();
        }
        if self.float {
            self.float = parse_float(v).is_some();
        }
        if self.boolean {
            self.boolean = parse_bool(v).is_some();
        }
        if self.date {
            self.date = is_date(v);
        }
        if self.timestamp {
            self.timestamp = is_timestamp(v);
        }
    }

    fn kind(&self) -> ColumnType {
        match self {
            _ if !self.seen => ColumnType::Text,
            Inference { integer: true, .. } => ColumnType::Integer,
            Inference { float: true, .. } => ColumnType::Float,
            Inference { boolean: true, .. } => ColumnType::Boolean,
            Inference { date: true, .. } => ColumnType::Date,
            Inference {
                timestamp: true, ..
            } => ColumnType::Timestamp,
            _ => ColumnType::Text,
        }
    }
}

pub fn parse_integer(v: &str) -> Option<i64> {
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    // Leading zeros mean an identifier (a ZIP code, an account number), not a number.
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    v.parse().ok()
}

pub fn parse_float(v: &str) -> Option<f64> {
    let unsigned = v.strip_prefix(['-', '+']).unwrap_or(v).as_bytes();
    if unsigned.len() > 1 && unsigned[0] == b'0' && unsigned[1].is_ascii_digit() {
        return None; // 02134 is an identifier
    }
    let looks_numeric = v
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && v.bytes().any(|b| b.is_ascii_digit());
    // Only values a float holds exactly as written: at most 15 significant digits (any decimal
    // of 15 digits round-trips through an f64). A longer number (an id, an account number, a
    // 20-digit integer) stays text, never a rounded float.
    let mantissa = v.split(['e', 'E']).next().unwrap_or(v);
    let significant = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|b| *b == b'0')
        .count();
    let exact = significant <= 15 || {
        // Trailing zeros after the point carry no precision (1.50000000000000000).
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let trimmed = if mantissa.contains('.') {
            digits.trim_end_matches('0')
        } else {
            digits.as_str()
        };
        trimmed.trim_start_matches('0').len() <= 15
    };
    (looks_numeric && exact)
        .then(|| v.parse::<f64>().ok())
        .flatten()
        .filter(|f| f.is_finite())
}

pub fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn two(b: &[u8]) -> Option<u32> {
    (b.len() == 2 && b.iter().all(u8::is_ascii_digit))
        .then(|| u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0'))
}

/// `YYYY-MM-DD`, a real calendar day.
pub fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !b[..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let year = b[..4]
        .iter()
        .fold(0u32, |a, c| a * 10 + u32::from(c - b'0'));
    let (Some(month), Some(day)) = (two(&b[5..7]), two(&b[8..10])) else {
        return false;
    };
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1 && (1..=days).contains(&day)
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.fraction]][Z|±HH:MM]`.
pub fn is_timestamp(v: &str) -> bool {
    let b = v.as_bytes();
    // Byte 10 may fall inside a multi-byte character: check it is a boundary before slicing.
    if b.len() < 16
        || !v.is_char_boundary(10)
        || !is_date(&v[..10])
        || !(b[10] == b'T' || b[10] == b' ')
    {
        return false;
    }
    let (Some(h), Some(m)) = (two(&b[11..13]), two(&b[14..16])) else {
        return false;
    };
    if b[13] != b':' || h > 23 || m > 59 {
        return false;
    }
    let mut rest = &b[16..];
    if let Some(r) = rest.strip_prefix(b":") {
        let Some(s) = r.get(..2).and_then(two) else {
            return false;
        };
        if s > 60 {
            return false;
        }
        rest = &r[2..];
        if let Some(r) = rest.strip_prefix(b".") {
            let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return false;
            }
            rest = &r[n..];
        }
    }
    match rest {
        [] | [b'Z'] => true,
        [sign, h1, h2, b':', m1, m2] if (*sign == b'+' || *sign == b'-') => {
            two(&[*h1, *h2]).is_some_and(|h| h <= 23) && two(&[*m1, *m2]).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(csv: &str) -> Vec<ColumnType> {
        ingest(csv.as_bytes())
            .unwrap()
            .columns
            .into_iter()
            .map(|c| c.kind)
            .collect()
    }

    #[test]
    fn column_types_are_inferred_from_every_value() {
        use ColumnType::*;
        let csv = "id,price,active,day,at,name,zip,mixed,empty\n\
                   1,9.99,true,2024-02-29,2024-02-29T10:00:00Z,Ada,02134,1,\n\
                   -2,10,FALSE,2023-12-31,2024-03-01 09:30:15.123,Bo,10115,x,\n\
                   ,,,,,,,,\n";
        assert_eq!(
            kinds(csv),
            [
                Integer, Float, Boolean, Date, Timestamp, Text, Text, Text, Text
            ]
        );
        let d = ingest(csv.as_bytes()).unwrap();
        assert_eq!(d.rows, 3);
        assert_eq!(d.bytes, csv.len() as u64);
        assert_eq!(d.sha256.len(), 64);
    }

    #[test]
    fn long_numbers_stay_exact_as_text_and_short_ones_are_numbers() {
        use ColumnType::{Float, Integer, Text};
        // 20 digits fit neither an i64 nor an f64 exactly: text, as written.
        assert_eq!(
            kinds("id\n12345678901234567890\n98765432109876543210\n"),
            vec![Text]
        );
        // 16 significant digits with a point: a float would round them.
        assert_eq!(kinds("x\n1234567.890123456\n"), vec![Text]);
        assert_eq!(parse_float("1234567.890123456"), None);
        // 15 digits, trailing zeros and exponents are exact.
        assert_eq!(kinds("x\n123456789.012345\n2.5e10\n"), vec![Float]);
        assert_eq!(parse_float("1.500000000000000000"), Some(1.5));
        assert_eq!(kinds("n\n9223372036854775807\n"), vec![Integer]);
    }

    #[test]
    fn impossible_dates_and_times_are_text() {
        assert!(!is_date("2023-02-29"));
        assert!(!is_date("2024-13-01"));
        assert!(is_timestamp("2024-01-01T23:59:60+02:00"));
        assert!(!is_timestamp("2024-01-01T24:00:00Z"));
        assert!(!is_timestamp("2024-01-01T10:00:00+2"));
        assert!(
            !is_timestamp("Jürgen Müller GmbH"),
            "non-ASCII text is not sliced mid-character"
        );
        assert_eq!(
            ingest("name\nJürgen Müller GmbH\n".as_bytes())
                .unwrap()
                .columns[0]
                .kind,
            ColumnType::Text
        );
    }

    #[test]
    fn errors_name_their_line() {
        assert_eq!(ingest(b""), Err(IngestError::Empty));
        assert_eq!(
            ingest(b"a,b\n1,2\n3\n"),
            Err(IngestError::Shape {
                line: 3,
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            ingest(b"a,b\n1,2\n\xff,3\n"),
            Err(IngestError::Encoding { line: 3 })
        );
        assert_eq!(
            ingest(b"a,,b\n1,2,3\n"),
            Err(IngestError::EmptyColumnName { index: 2 })
        );
        assert_eq!(
            ingest(b"a,A\n1,2\n"),
            Err(IngestError::DuplicateColumn { name: "A".into() })
        );
        let header_only = ingest(b"\xEF\xBB\xBFa,b\n").unwrap();
        assert_eq!(header_only.rows, 0);
        assert_eq!(header_only.columns[0].name, "a");
    }
}
