//! Exports: a query result written as CSV or JSON Lines with the redaction preset applied, then
//! scanned again: zero findings earn the PASS badge. The same input and preset give the same
//! bytes.

use crate::sandbox::QueryResult;
use domain::pii::{self, Detector, Method};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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

/// How free text is scrubbed: which detectors, which method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRule {
    pub detectors: Vec<Detector>,
    pub method: Method,
}

impl TextRule {
    /// The built-in `default` preset: every detector, replaced by its name.
    pub fn default_preset() -> Self {
        Self {
            detectors: Detector::ALL.to_vec(),
            method: Method::Replace,
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
}

fn cell_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Scrub every cell with `rule` (the hash method keyed by `key`), write `format`, scan the
/// result, hash it.
pub fn export(result: &QueryResult, format: Format, rule: &TextRule, key: &[u8]) -> Exported {
    let mut out = Vec::with_capacity(result.rows.len() * 64);
    match format {
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(&mut out);
            w.write_record(&result.columns).expect("writing to memory");
            for row in &result.rows {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| {
                        cell_text(v)
                            .map(|t| pii::scrub(&t, &rule.detectors, rule.method, key))
                            .unwrap_or_default()
                    })
                    .collect();
                w.write_record(&cells).expect("writing to memory");
            }
            w.flush().expect("writing to memory");
        }
        Format::Jsonl => {
            // Written by hand to keep the columns in their order.
            let keys: Vec<String> = result
                .columns
                .iter()
                .map(|c| serde_json::to_string(c).expect("strings serialize"))
                .collect();
            for row in &result.rows {
                out.push(b'{');
                for (k, (name, v)) in keys.iter().zip(row).enumerate() {
                    let scrubbed = match v {
                        Value::String(s) => {
                            Value::String(pii::scrub(s, &rule.detectors, rule.method, key))
                        }
                        Value::Null => Value::Null,
                        other => {
                            let text = other.to_string();
                            let s = pii::scrub(&text, &rule.detectors, rule.method, key);
                            if s == text {
                                other.clone()
                            } else {
                                Value::String(s)
                            }
                        }
                    };
                    if k > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    serde_json::to_writer(&mut out, &scrubbed).expect("writing to memory");
                }
                out.extend_from_slice(b"}\n");
            }
        }
    }
    let findings = scan_output(&out);
    let sha256 = Sha256::digest(&out)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Exported {
        rows: result.rows.len() as u64,
        size: out.len() as u64,
        sha256,
        badge: if findings.is_empty() {
            Badge::Pass
        } else {
            Badge::Fail
        },
        findings,
        bytes: out,
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
        let a = export(&result(), Format::Csv, &TextRule::default_preset(), b"t");
        let b = export(&result(), Format::Csv, &TextRule::default_preset(), b"t");
        assert_eq!(a, b);
        assert_eq!(a.badge, Badge::Pass);
        assert_eq!(
            String::from_utf8(a.bytes).unwrap(),
            "id,email,note\n1,[email],call [phone]\n2,,\"nothing, here \"\"quoted\"\"\"\n"
        );
        let j = export(&result(), Format::Jsonl, &TextRule::default_preset(), b"t");
        assert_eq!(
            String::from_utf8(j.bytes).unwrap(),
            "{\"id\":1,\"email\":\"[email]\",\"note\":\"call [phone]\"}\n{\"id\":2,\"email\":null,\"note\":\"nothing, here \\\"quoted\\\"\"}\n"
        );
    }

    #[test]
    fn a_preset_that_leaves_pii_earns_fail_with_counts_only() {
        let only_phones = TextRule {
            detectors: vec![Detector::Phone],
            method: Method::Mask,
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
}
