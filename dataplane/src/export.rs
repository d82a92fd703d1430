//! Exports: a query result written as CSV or JSON Lines with the redaction preset applied, then
//! scanned again: zero findings earn the PASS badge. The same input and preset give the same
//! bytes.

use crate::sandbox::QueryResult;
use domain::pii::{self, Detector};
use domain::preset::ColumnAction;
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
    let actions: Vec<Option<&ColumnAction>> =
        result.columns.iter().map(|c| rules.rule_for(c)).collect();
    let kept: Vec<usize> = (0..result.columns.len())
        .filter(|i| actions[*i] != Some(&ColumnAction::Drop))
        .collect();
    let mut out = Vec::with_capacity(result.rows.len() * 64);
    match format {
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(&mut out);
            w.write_record(kept.iter().map(|i| &result.columns[*i]))
                .expect("writing to memory");
            for row in &result.rows {
                let cells: Vec<String> = kept
                    .iter()
                    .map(|i| match redact(&row[*i], actions[*i], rules, key) {
                        Value::Null => String::new(),
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                w.write_record(&cells).expect("writing to memory");
            }
            w.flush().expect("writing to memory");
        }
        Format::Jsonl => {
            // Written by hand to keep the columns in their order.
            let keys: Vec<String> = kept
                .iter()
                .map(|i| serde_json::to_string(&result.columns[*i]).expect("strings serialize"))
                .collect();
            for row in &result.rows {
                out.push(b'{');
                for (k, (name, i)) in keys.iter().zip(&kept).enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    serde_json::to_writer(&mut out, &redact(&row[*i], actions[*i], rules, key))
                        .expect("writing to memory");
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
}
