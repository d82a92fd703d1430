//! Redaction presets (RED-171): named, versioned rule sets shared within a tenant. Per-column
//! rules (by exact name or glob) and a free-text rule; editing makes a new version, deleting
//! keeps the history. The built-in `default` preset always exists.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::pii::{Detector, Method};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

pub const DEFAULT_ID: &str = "default";

pub fn stream_id(preset: Uuid) -> String {
    format!("preset-{preset}")
}

/// What happens to a column's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnAction {
    /// Leave the values as they are (the output scan still checks them).
    Keep,
    /// Leave the column out.
    Drop,
    /// Replace every character by `*`.
    Mask,
    /// A keyed hash, stable within the tenant.
    Hash,
    /// The first `length` characters.
    Truncate { length: usize },
    /// Dates and timestamps to their month (`2024-03`); numbers down to a multiple of `bucket`.
    Generalize { bucket: Option<u64> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawColumnRule", into = "RawColumnRule")]
pub struct ColumnRule {
    /// A column name, or a glob with `*` and `?` (case-insensitive).
    pub column: String,
    pub action: ColumnAction,
}

/// The wire form: `{"column": "email*", "action": "truncate", "length": 4}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumnRule {
    column: String,
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket: Option<u64>,
}

impl TryFrom<RawColumnRule> for ColumnRule {
    type Error = String;
    fn try_from(r: RawColumnRule) -> Result<Self, String> {
        let action = match (r.action.as_str(), r.length, r.bucket) {
            ("keep", None, None) => ColumnAction::Keep,
            ("drop", None, None) => ColumnAction::Drop,
            ("mask", None, None) => ColumnAction::Mask,
            ("hash", None, None) => ColumnAction::Hash,
            ("truncate", Some(length), None) => ColumnAction::Truncate { length },
            ("truncate", None, _) => return Err("truncate needs a length".into()),
            ("generalize", None, bucket) => ColumnAction::Generalize { bucket },
            ("keep" | "drop" | "mask" | "hash" | "truncate" | "generalize", _, _) => {
                return Err(format!("{} takes no such option", r.action));
            }
            (other, _, _) => {
                return Err(format!(
                    "unknown action {other:?} (expected keep, drop, mask, hash, truncate or generalize)"
                ));
            }
        };
        Ok(ColumnRule {
            column: r.column,
            action,
        })
    }
}

impl From<ColumnRule> for RawColumnRule {
    fn from(r: ColumnRule) -> Self {
        let (action, length, bucket) = match r.action {
            ColumnAction::Keep => ("keep", None, None),
            ColumnAction::Drop => ("drop", None, None),
            ColumnAction::Mask => ("mask", None, None),
            ColumnAction::Hash => ("hash", None, None),
            ColumnAction::Truncate { length } => ("truncate", Some(length), None),
            ColumnAction::Generalize { bucket } => ("generalize", None, bucket),
        };
        RawColumnRule {
            column: r.column,
            action: action.into(),
            length,
            bucket,
        }
    }
}

/// How free text (every column without a rule) is scrubbed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRule {
    pub detectors: Vec<Detector>,
    pub method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub columns: Vec<ColumnRule>,
    pub text: TextRule,
}

impl Rules {
    /// The built-in `default` preset: every detector, replaced by its name.
    pub fn default_preset() -> Self {
        Self {
            columns: Vec::new(),
            text: TextRule {
                detectors: Detector::ALL.to_vec(),
                method: Method::Replace,
            },
        }
    }

    /// Every problem with these rules, as (field, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.columns.len() > 200 {
            out.push(("columns".into(), "at most 200 column rules".into()));
        }
        for (i, r) in self.columns.iter().enumerate() {
            let field = format!("columns[{i}]");
            let p = r.column.trim();
            if p.is_empty() || p.chars().count() > 128 || p.chars().any(char::is_control) {
                out.push((
                    format!("{field}.column"),
                    "must be 1 to 128 characters".into(),
                ));
            }
            match r.action {
                ColumnAction::Truncate { length } if !(1..=10_000).contains(&length) => {
                    out.push((format!("{field}.length"), "must be 1 to 10000".into()))
                }
                ColumnAction::Generalize { bucket: Some(0) } => {
                    out.push((format!("{field}.bucket"), "must be at least 1".into()))
                }
                _ => {}
            }
        }
        if self.text.detectors.len() > Detector::ALL.len() {
            out.push(("text.detectors".into(), "lists a detector twice".into()));
        }
        let mut seen = self.text.detectors.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.text.detectors.len() {
            out.push(("text.detectors".into(), "lists a detector twice".into()));
        }
        out
    }

    /// The rule for a column: the first whose name or glob matches.
    pub fn rule_for(&self, column: &str) -> Option<&ColumnAction> {
        self.columns
            .iter()
            .find(|r| glob_match(&r.column.trim().to_lowercase(), &column.to_lowercase()))
            .map(|r| &r.action)
    }
}

/// `*` any run, `?` one character; everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetVersion {
    pub preset_id: Uuid,
    pub name: String,
    pub version: u32,
    pub rules: Rules,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetDeleted {
    pub preset_id: Uuid,
    pub last_version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresetEvent {
    Created(PresetVersion),
    Edited(PresetVersion),
    Deleted(PresetDeleted),
}

impl PresetEvent {
    /// Every event type this aggregate writes, with the schema version it writes.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("preset.created", 1),
        ("preset.edited", 1),
        ("preset.deleted", 1),
    ];
}

impl DomainEvent for PresetEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PresetEvent::Created(_) => "preset.created",
            PresetEvent::Edited(_) => "preset.edited",
            PresetEvent::Deleted(_) => "preset.deleted",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            PresetEvent::Created(e) | PresetEvent::Edited(e) => serde_json::to_value(e),
            PresetEvent::Deleted(e) => serde_json::to_value(e),
        }
        .expect("preset events serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("preset.created", 1) => Ok(PresetEvent::Created(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("preset.edited", 1) => Ok(PresetEvent::Edited(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("preset.deleted", 1) => Ok(PresetEvent::Deleted(EventDecodeError::parse(
                event_type, payload,
            )?)),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresetCommand {
    Create {
        preset_id: Uuid,
        name: String,
        rules: Rules,
    },
    Edit {
        name: Option<String>,
        rules: Rules,
    },
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    #[error("this preset already exists")]
    AlreadyExists,
    #[error("no such preset")]
    NotFound,
    #[error("the preset was deleted")]
    Deleted,
    #[error("invalid rules")]
    Invalid(Vec<(String, String)>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preset {
    pub versions: BTreeMap<u32, PresetVersion>,
    pub deleted: bool,
}

impl Preset {
    pub fn latest(&self) -> Option<&PresetVersion> {
        self.versions.values().next_back()
    }
}

impl Aggregate for Preset {
    type Command = PresetCommand;
    type Event = PresetEvent;
    type Error = PresetError;

    fn decide(
        &self,
        command: &PresetCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<PresetEvent>, PresetError> {
        let check = |rules: &Rules| {
            let problems = rules.problems();
            if problems.is_empty() {
                Ok(())
            } else {
                Err(PresetError::Invalid(problems))
            }
        };
        match command {
            PresetCommand::Create { .. } if !self.versions.is_empty() => {
                Err(PresetError::AlreadyExists)
            }
            PresetCommand::Create {
                preset_id,
                name,
                rules,
            } => {
                check(rules)?;
                Ok(vec![PresetEvent::Created(PresetVersion {
                    preset_id: *preset_id,
                    name: name.clone(),
                    version: 1,
                    rules: rules.clone(),
                })])
            }
            _ if self.deleted => Err(PresetError::Deleted),
            PresetCommand::Edit { name, rules } => {
                let latest = self.latest().ok_or(PresetError::NotFound)?;
                check(rules)?;
                Ok(vec![PresetEvent::Edited(PresetVersion {
                    preset_id: latest.preset_id,
                    name: name.clone().unwrap_or_else(|| latest.name.clone()),
                    version: latest.version + 1,
                    rules: rules.clone(),
                })])
            }
            PresetCommand::Delete => {
                let latest = self.latest().ok_or(PresetError::NotFound)?;
                Ok(vec![PresetEvent::Deleted(PresetDeleted {
                    preset_id: latest.preset_id,
                    last_version: latest.version,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &PresetEvent) {
        match event {
            PresetEvent::Created(v) | PresetEvent::Edited(v) => {
                self.versions.insert(v.version, v.clone());
            }
            PresetEvent::Deleted(_) => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;

    fn rules(action: ColumnAction) -> Rules {
        Rules {
            columns: vec![ColumnRule {
                column: "email*".into(),
                action,
            }],
            text: TextRule {
                detectors: vec![Detector::Email],
                method: Method::Mask,
            },
        }
    }

    fn created() -> PresetEvent {
        PresetEvent::Created(PresetVersion {
            preset_id: Uuid::from_u128(1),
            name: "partners".into(),
            version: 1,
            rules: rules(ColumnAction::Hash),
        })
    }

    #[test]
    fn editing_makes_a_new_version_and_deleting_keeps_history() {
        let state = given::<Preset>([created()])
            .when(PresetCommand::Edit {
                name: None,
                rules: rules(ColumnAction::Drop),
            })
            .then([PresetEvent::Edited(PresetVersion {
                preset_id: Uuid::from_u128(1),
                name: "partners".into(),
                version: 2,
                rules: rules(ColumnAction::Drop),
            })]);
        assert_eq!(state.versions.len(), 2);
        let state = given::<Preset>([created()])
            .when(PresetCommand::Delete)
            .then([PresetEvent::Deleted(PresetDeleted {
                preset_id: Uuid::from_u128(1),
                last_version: 1,
            })]);
        assert_eq!(state.versions.len(), 1, "history kept");
        given::<Preset>([
            created(),
            PresetEvent::Deleted(PresetDeleted {
                preset_id: Uuid::from_u128(1),
                last_version: 1,
            }),
        ])
        .when(PresetCommand::Edit {
            name: None,
            rules: rules(ColumnAction::Keep),
        })
        .then_err(PresetError::Deleted);
    }

    #[test]
    fn invalid_rules_are_refused_field_by_field() {
        let bad = Rules {
            columns: vec![
                ColumnRule {
                    column: " ".into(),
                    action: ColumnAction::Keep,
                },
                ColumnRule {
                    column: "x".into(),
                    action: ColumnAction::Truncate { length: 0 },
                },
                ColumnRule {
                    column: "y".into(),
                    action: ColumnAction::Generalize { bucket: Some(0) },
                },
            ],
            text: TextRule {
                detectors: vec![Detector::Email, Detector::Email],
                method: Method::Replace,
            },
        };
        given::<Preset>([])
            .when(PresetCommand::Create {
                preset_id: Uuid::nil(),
                name: "x".into(),
                rules: bad,
            })
            .then_err(PresetError::Invalid(vec![
                (
                    "columns[0].column".into(),
                    "must be 1 to 128 characters".into(),
                ),
                ("columns[1].length".into(), "must be 1 to 10000".into()),
                ("columns[2].bucket".into(), "must be at least 1".into()),
                ("text.detectors".into(), "lists a detector twice".into()),
            ]));
    }

    #[test]
    fn globs_match_names_case_insensitively() {
        assert!(glob_match("email*", "email_work"));
        assert!(glob_match("*_id", "customer_id"));
        assert!(glob_match("ph?ne", "phone"));
        assert!(!glob_match("email", "email_work"));
        let r = rules(ColumnAction::Mask);
        assert_eq!(r.rule_for("EMAIL_home"), Some(&ColumnAction::Mask));
        assert_eq!(r.rule_for("name"), None);
    }
}
