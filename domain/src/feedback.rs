//! In-product feedback (SPEC §7, FAM-101): what a member reports from a screen, the diagnostics
//! the server attaches, and its triage — state, assignee, labels, priority.
//!
//! The `Feedback` aggregate (stream `feedback-{feedback_id}`, tenant-scoped) never sees raw text:
//! the use case scrubs the message with the PII engine before the command is built, so what is
//! decided here and stored is already clean. States move
//! `new → triaged → in_progress → resolved | wont_fix | spam`; `wont_fix` and `spam` may also be
//! decided straight from `new` or `triaged` (spam is usually obvious at intake). The three last
//! states are final. Anything else is [`FeedbackError::InvalidTransition`] (409).

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

/// The longest message a member may send, in characters (before scrubbing).
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// The longest message stored (scrubbing may lengthen a message: `a@b.c` becomes `[email]`).
pub const MAX_STORED_MESSAGE_CHARS: usize = 4 * MAX_MESSAGE_CHARS;
/// At most this many labels on one item.
pub const MAX_LABELS: usize = 16;

/// The stream of one feedback item.
pub fn stream_id(feedback: Uuid) -> String {
    format!("feedback-{feedback}")
}

/// A client-side name (screen, step, category, label): 1–64 of `a-z 0-9 _ - . /`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-./".contains(&b))
}

/// An assignee: 1–128 printable characters, no control characters.
pub fn valid_assignee(a: &str) -> bool {
    (1..=128).contains(&a.chars().count()) && !a.chars().any(char::is_control)
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant),*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)*
                    other => Err(format!(
                        "unknown value {other:?} (expected one of: {})",
                        [$($s),*].join(", ")
                    )),
                }
            }
        }
    };
}

named_enum!(
    /// How bad the member says it is.
    Severity { Low = "low", Medium = "medium", High = "high", Critical = "critical" }
);

named_enum!(
    /// Where an item is in triage.
    State {
        New = "new",
        Triaged = "triaged",
        InProgress = "in_progress",
        Resolved = "resolved",
        WontFix = "wont_fix",
        Spam = "spam",
    }
);

named_enum!(
    /// How soon support means to act.
    Priority { P0 = "p0", P1 = "p1", P2 = "p2", P3 = "p3" }
);

impl State {
    /// Whether triage may move an item from `self` to `to`.
    pub fn can_move_to(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (New, Triaged)
                | (Triaged, InProgress)
                | (InProgress, Resolved)
                | (New | Triaged | InProgress, WontFix | Spam)
        )
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Resolved | State::WontFix | State::Spam)
    }
}

/// What the server attached (absent when the member or the tenant opted out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics {
    pub trace_id: String,
    pub request_id: String,
    pub app_version: String,
    pub environment: String,
    pub plan: String,
    /// Every flag's state for the tenant at submission.
    pub flags: BTreeMap<String, bool>,
    /// A keyed hash of the user id, stable within the tenant, useless across tenants.
    pub user_ref: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub feedback_id: Uuid,
    /// Already scrubbed (absent when the member opted out of everything but screen, step and
    /// severity).
    pub message: Option<String>,
    pub screen: String,
    pub step: String,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Diagnostics>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChanged {
    pub from: State,
    pub to: State,
}

/// Triage details set (each field: the new value; absent fields did not change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triaged {
    /// `Some(None)` (stored as `null`) clears the assignee.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub assignee: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub priority: Option<Option<Priority>>,
}

/// A field that is present (`null` included) is `Some`; an absent one is `None` (by `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedbackEvent {
    Submitted(Box<Submitted>),
    Triaged(Triaged),
    StateChanged(StateChanged),
}

impl FeedbackEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("feedback.submitted", 1),
        ("feedback.triaged", 1),
        ("feedback.state_changed", 1),
    ];
}

impl DomainEvent for FeedbackEvent {
    fn event_type(&self) -> &'static str {
        match self {
            FeedbackEvent::Submitted(_) => "feedback.submitted",
            FeedbackEvent::Triaged(_) => "feedback.triaged",
            FeedbackEvent::StateChanged(_) => "feedback.state_changed",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            FeedbackEvent::Submitted(e) => serde_json::to_value(e),
            FeedbackEvent::Triaged(e) => serde_json::to_value(e),
            FeedbackEvent::StateChanged(e) => serde_json::to_value(e),
        }
        .expect("feedback events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("feedback.submitted", 1) => Ok(FeedbackEvent::Submitted(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("feedback.triaged", 1) => Ok(FeedbackEvent::Triaged(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("feedback.state_changed", 1) => Ok(FeedbackEvent::StateChanged(
                EventDecodeError::parse(event_type, payload)?,
            )),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedbackCommand {
    /// A member's report, already scrubbed.
    Submit(Box<Submitted>),
    /// Triage: any of a new state, assignee, labels and priority.
    Triage {
        state: Option<State>,
        assignee: Option<Option<String>>,
        labels: Option<Vec<String>>,
        priority: Option<Option<Priority>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("no such feedback")]
    NotFound,
    #[error("this feedback was already submitted")]
    AlreadySubmitted,
    #[error("feedback cannot move from {from} to {to}")]
    InvalidTransition { from: State, to: State },
}

/// One item, as far as deciding needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    pub state: Option<State>,
    pub assignee: Option<String>,
    pub labels: Vec<String>,
    pub priority: Option<Priority>,
}

fn invalid(field: &'static str, reason: &str) -> FeedbackError {
    FeedbackError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

fn check_submitted(s: &Submitted) -> Result<(), FeedbackError> {
    if let Some(m) = &s.message {
        let n = m.chars().count();
        if n == 0 || n > MAX_STORED_MESSAGE_CHARS {
            return Err(invalid("message", "must not be empty or too long"));
        }
    }
    // Screen, step and category are scrubbed too; a scrubbed name is `[detector]`.
    let name_ok = |n: &str| valid_name(n) || (n.len() <= 64 && n.starts_with('['));
    if !name_ok(&s.screen) {
        return Err(invalid("screen", "1 to 64 of a-z, 0-9, _ - . /"));
    }
    if !name_ok(&s.step) {
        return Err(invalid("step", "1 to 64 of a-z, 0-9, _ - . /"));
    }
    if s.category.as_deref().is_some_and(|c| !name_ok(c)) {
        return Err(invalid("category", "1 to 64 of a-z, 0-9, _ - . /"));
    }
    Ok(())
}

impl Aggregate for Feedback {
    type Command = FeedbackCommand;
    type Event = FeedbackEvent;
    type Error = FeedbackError;

    fn decide(
        &self,
        command: &FeedbackCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<FeedbackEvent>, FeedbackError> {
        match command {
            FeedbackCommand::Submit(s) => {
                if self.state.is_some() {
                    return Err(FeedbackError::AlreadySubmitted);
                }
                check_submitted(s)?;
                Ok(vec![FeedbackEvent::Submitted(s.clone())])
            }
            FeedbackCommand::Triage {
                state,
                assignee,
                labels,
                priority,
            } => {
                let Some(current) = self.state else {
                    return Err(FeedbackError::NotFound);
                };
                if let Some(Some(a)) = assignee
                    && !valid_assignee(a)
                {
                    return Err(invalid("assignee", "1 to 128 characters, no control ones"));
                }
                if let Some(l) = labels {
                    if l.len() > MAX_LABELS {
                        return Err(invalid("labels", "at most 16 labels"));
                    }
                    if l.iter().any(|l| !valid_name(l)) {
                        return Err(invalid("labels", "each 1 to 64 of a-z, 0-9, _ - . /"));
                    }
                }
                let mut out = Vec::new();
                let labels = labels.as_ref().map(|l| {
                    let mut l = l.clone();
                    l.sort();
                    l.dedup();
                    l
                });
                let details = Triaged {
                    assignee: assignee.clone().filter(|a| *a != self.assignee),
                    labels: labels.filter(|l| *l != self.labels),
                    priority: priority.filter(|p| *p != self.priority),
                };
                if let Some(to) = *state
                    && to != current
                {
                    if !current.can_move_to(to) {
                        return Err(FeedbackError::InvalidTransition { from: current, to });
                    }
                    out.push(FeedbackEvent::StateChanged(StateChanged {
                        from: current,
                        to,
                    }));
                }
                if details.assignee.is_some()
                    || details.labels.is_some()
                    || details.priority.is_some()
                {
                    out.insert(0, FeedbackEvent::Triaged(details));
                }
                Ok(out)
            }
        }
    }

    fn evolve(&mut self, event: &FeedbackEvent) {
        match event {
            FeedbackEvent::Submitted(_) => self.state = Some(State::New),
            FeedbackEvent::StateChanged(c) => self.state = Some(c.to),
            FeedbackEvent::Triaged(t) => {
                if let Some(a) = &t.assignee {
                    self.assignee = a.clone();
                }
                if let Some(l) = &t.labels {
                    self.labels = l.clone();
                }
                if let Some(p) = t.priority {
                    self.priority = p;
                }
            }
        }
    }
}

/// The stream of a tenant's feedback settings.
pub fn settings_stream_id(tenant: crate::TenantId) -> String {
    format!("feedback-settings-{tenant}")
}

/// A tenant's feedback settings: whether diagnostics are attached (on unless turned off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackSettings {
    pub diagnostics_off: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingsCommand {
    /// Turn diagnostics on or off for every member of the tenant.
    SetDiagnostics { enabled: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticsSet {
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingsEvent {
    DiagnosticsSet(DiagnosticsSet),
}

impl SettingsEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[("feedback.diagnostics_set", 1)];
}

impl DomainEvent for SettingsEvent {
    fn event_type(&self) -> &'static str {
        "feedback.diagnostics_set"
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            SettingsEvent::DiagnosticsSet(e) => {
                serde_json::to_value(e).expect("feedback settings events always serialize")
            }
        }
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("feedback.diagnostics_set", 1) => Ok(SettingsEvent::DiagnosticsSet(
                EventDecodeError::parse(event_type, payload)?,
            )),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

impl Aggregate for FeedbackSettings {
    type Command = SettingsCommand;
    type Event = SettingsEvent;
    type Error = FeedbackError;

    /// Setting what is already set writes nothing.
    fn decide(
        &self,
        command: &SettingsCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<SettingsEvent>, FeedbackError> {
        let SettingsCommand::SetDiagnostics { enabled } = *command;
        if enabled != self.diagnostics_off {
            return Ok(Vec::new());
        }
        Ok(vec![SettingsEvent::DiagnosticsSet(DiagnosticsSet {
            enabled,
        })])
    }

    fn evolve(&mut self, event: &SettingsEvent) {
        let SettingsEvent::DiagnosticsSet(d) = event;
        self.diagnostics_off = !d.enabled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted() -> Submitted {
        Submitted {
            feedback_id: Uuid::nil(),
            message: Some("the export button does nothing".into()),
            screen: "exports".into(),
            step: "download".into(),
            severity: Severity::High,
            category: None,
            diagnostics: None,
        }
    }

    fn triage(state: State) -> FeedbackCommand {
        FeedbackCommand::Triage {
            state: Some(state),
            assignee: None,
            labels: None,
            priority: None,
        }
    }

    fn run(f: &mut Feedback, c: &FeedbackCommand) -> Result<Vec<FeedbackEvent>, FeedbackError> {
        let events = f.decide(c, OffsetDateTime::UNIX_EPOCH)?;
        for e in &events {
            f.evolve(e);
        }
        Ok(events)
    }

    #[test]
    fn feedback_moves_through_triage_and_refuses_invalid_transitions() {
        let mut f = Feedback::default();
        assert_eq!(
            run(&mut f, &triage(State::Triaged)),
            Err(FeedbackError::NotFound)
        );
        run(&mut f, &FeedbackCommand::Submit(Box::new(submitted()))).unwrap();
        assert_eq!(
            run(&mut f, &FeedbackCommand::Submit(Box::new(submitted()))),
            Err(FeedbackError::AlreadySubmitted)
        );
        assert_eq!(
            run(&mut f, &triage(State::Resolved)),
            Err(FeedbackError::InvalidTransition {
                from: State::New,
                to: State::Resolved
            })
        );
        run(&mut f, &triage(State::Triaged)).unwrap();
        run(&mut f, &triage(State::InProgress)).unwrap();
        assert!(run(&mut f, &triage(State::InProgress)).unwrap().is_empty());
        run(&mut f, &triage(State::Resolved)).unwrap();
        assert!(run(&mut f, &triage(State::New)).is_err());
        assert!(State::Resolved.is_final());
    }

    #[test]
    fn feedback_a_cleared_assignee_survives_the_store() {
        let cleared = FeedbackEvent::Triaged(Triaged {
            assignee: Some(None),
            labels: None,
            priority: None,
        });
        let bytes = serde_json::to_vec(&cleared.to_payload()).unwrap();
        assert_eq!(bytes, br#"{"assignee":null}"#);
        assert_eq!(
            FeedbackEvent::from_stored("feedback.triaged", 1, &bytes).unwrap(),
            cleared
        );
    }

    #[test]
    fn feedback_triage_details_record_only_changes() {
        let mut f = Feedback::default();
        run(&mut f, &FeedbackCommand::Submit(Box::new(submitted()))).unwrap();
        let set = FeedbackCommand::Triage {
            state: None,
            assignee: Some(Some("support-1".into())),
            labels: Some(vec!["ui".into(), "export".into(), "ui".into()]),
            priority: Some(Some(Priority::P1)),
        };
        assert_eq!(run(&mut f, &set).unwrap().len(), 1);
        assert_eq!(f.labels, vec!["export", "ui"]);
        assert!(run(&mut f, &set).unwrap().is_empty(), "nothing changed");
        let bad = FeedbackCommand::Triage {
            state: None,
            assignee: None,
            labels: Some(vec!["Not Valid".into()]),
            priority: None,
        };
        assert!(matches!(
            run(&mut f, &bad),
            Err(FeedbackError::Invalid {
                field: "labels",
                ..
            })
        ));
    }
}
