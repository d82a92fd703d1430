//! The guided first-success flow (SPEC §9, EXP-131): where each user is on the way from joining to
//! a first PASS export, what the client reports of its screen, the nudges a user dismissed or
//! snoozed — and the pure rules over them: the resume payload after 30 minutes away, the next
//! nudge from a rule table (data), and drop-off per step.
//!
//! The `Onboarding` aggregate (stream `onboarding-{user_id}`) records what only the client knows
//! (the screen it shows) and what the user said (dismiss, snooze). The steps themselves are facts
//! the rest of the log already holds (`member.added`, `dataset.uploaded`, `query.run`,
//! `export.completed` with badge PASS, by the user's own actions): a read model follows them.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::insights::{Step, percentile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// How long without activity makes a return a return (SPEC §9).
pub const AWAY: Duration = Duration::minutes(30);

/// The stream of a user's onboarding records.
pub fn stream_id(user: crate::UserId) -> String {
    format!("onboarding-{user}")
}

/// A screen id as the client names it: 1–64 of `a-z 0-9 _ - . /`.
pub fn valid_screen(screen: &str) -> bool {
    (1..=64).contains(&screen.len())
        && screen
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-./".contains(&b))
}

/// A nudge id as the rule table names it: 1–64 of `a-z 0-9 _ -`.
pub fn valid_nudge(nudge: &str) -> bool {
    (1..=64).contains(&nudge.len())
        && nudge
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnboardingCommand {
    /// The client shows `screen` for `step`.
    ReportPosition { screen: String, step: Step },
    /// The user dismissed a nudge.
    Dismiss { nudge: String },
    /// The user snoozed a nudge until `until`.
    Snooze {
        nudge: String,
        until: OffsetDateTime,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionReported {
    pub screen: String,
    pub step: Step,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NudgeDismissed {
    pub nudge: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NudgeSnoozed {
    pub nudge: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnboardingEvent {
    PositionReported(PositionReported),
    NudgeDismissed(NudgeDismissed),
    NudgeSnoozed(NudgeSnoozed),
}

impl OnboardingEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("onboarding.position_reported", 1),
        ("onboarding.nudge_dismissed", 1),
        ("onboarding.nudge_snoozed", 1),
    ];
}

impl DomainEvent for OnboardingEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OnboardingEvent::PositionReported(_) => "onboarding.position_reported",
            OnboardingEvent::NudgeDismissed(_) => "onboarding.nudge_dismissed",
            OnboardingEvent::NudgeSnoozed(_) => "onboarding.nudge_snoozed",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            OnboardingEvent::PositionReported(e) => serde_json::to_value(e),
            OnboardingEvent::NudgeDismissed(e) => serde_json::to_value(e),
            OnboardingEvent::NudgeSnoozed(e) => serde_json::to_value(e),
        }
        .expect("onboarding events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("onboarding.position_reported", 1) => Ok(OnboardingEvent::PositionReported(
                EventDecodeError::parse(event_type, payload)?,
            )),
            ("onboarding.nudge_dismissed", 1) => Ok(OnboardingEvent::NudgeDismissed(
                EventDecodeError::parse(event_type, payload)?,
            )),
            ("onboarding.nudge_snoozed", 1) => Ok(OnboardingEvent::NudgeSnoozed(
                EventDecodeError::parse(event_type, payload)?,
            )),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OnboardingError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the nudge is snoozed until a time already past")]
    SnoozeInPast,
}

/// A user's onboarding records, as far as deciding needs them (nothing: every valid report is
/// recorded; the aggregate exists so that each user's records are one ordered stream).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onboarding {
    pub records: u64,
}

impl Aggregate for Onboarding {
    type Command = OnboardingCommand;
    type Event = OnboardingEvent;
    type Error = OnboardingError;

    fn decide(
        &self,
        command: &OnboardingCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<OnboardingEvent>, OnboardingError> {
        let invalid = |field, reason: &str| OnboardingError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        match command {
            OnboardingCommand::ReportPosition { screen, step } => {
                if !valid_screen(screen) {
                    return Err(invalid("screen", "1 to 64 of a-z, 0-9, _ - . /"));
                }
                Ok(vec![OnboardingEvent::PositionReported(PositionReported {
                    screen: screen.clone(),
                    step: *step,
                })])
            }
            OnboardingCommand::Dismiss { nudge } => {
                if !valid_nudge(nudge) {
                    return Err(invalid("nudge", "1 to 64 of a-z, 0-9, _ -"));
                }
                Ok(vec![OnboardingEvent::NudgeDismissed(NudgeDismissed {
                    nudge: nudge.clone(),
                })])
            }
            OnboardingCommand::Snooze { nudge, until } => {
                if !valid_nudge(nudge) {
                    return Err(invalid("nudge", "1 to 64 of a-z, 0-9, _ -"));
                }
                if *until <= now {
                    return Err(OnboardingError::SnoozeInPast);
                }
                Ok(vec![OnboardingEvent::NudgeSnoozed(NudgeSnoozed {
                    nudge: nudge.clone(),
                    until: *until,
                })])
            }
        }
    }

    fn evolve(&mut self, _event: &OnboardingEvent) {
        self.records += 1;
    }
}

/// What the read model knows of one user's way through the flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// When each step was first reached after the previous one (`steps[0]`: the user joined).
    pub steps: [Option<OffsetDateTime>; 4],
    /// The user's last action of any kind.
    pub last_active: Option<OffsetDateTime>,
    /// The screen and step the client last reported, and when.
    pub position: Option<(String, Step, OffsetDateTime)>,
    /// The dataset the user last uploaded, and the last query they ran (by id, never its SQL).
    pub dataset_id: Option<Uuid>,
    pub query_id: Option<Uuid>,
    /// Nudge → when it was last dismissed.
    pub dismissed: BTreeMap<String, OffsetDateTime>,
    /// Nudge → until when it is snoozed.
    pub snoozed: BTreeMap<String, OffsetDateTime>,
}

impl Progress {
    pub fn active(&mut self, at: OffsetDateTime) {
        self.last_active = Some(self.last_active.map_or(at, |l| l.max(at)));
    }

    /// Step `step` happened at `at` (counted only after the previous step; the first counts once).
    pub fn reached(&mut self, step: Step, at: OffsetDateTime) {
        let k = step as usize;
        if self.steps[k].is_some() {
            return;
        }
        if k == 0 || self.steps[k - 1].is_some_and(|p| p <= at) {
            self.steps[k] = Some(at);
        }
    }

    /// The next step to take (`None` when the flow is done).
    pub fn next_step(&self) -> Option<Step> {
        Step::ALL
            .iter()
            .zip(self.steps.iter())
            .find(|(_, at)| at.is_none())
            .map(|(s, _)| *s)
    }

    /// Whether the user has joined and not finished the flow.
    pub fn mid_flow(&self) -> bool {
        self.steps[0].is_some() && self.steps[3].is_none()
    }
}

/// What a user coming back mid-flow is shown to pick up where they were.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resume {
    /// The step to do next.
    pub step: Step,
    /// The screen the client last showed (absent if it never reported one).
    pub screen: Option<String>,
    pub dataset_id: Option<Uuid>,
    pub query_id: Option<Uuid>,
    /// How long the user was away, in whole minutes.
    pub away_minutes: i64,
    pub banner: String,
}

fn step_text(step: Step) -> &'static str {
    match step {
        Step::SignedUp => "join your team",
        Step::DatasetUploaded => "upload a dataset",
        Step::FirstQuery => "run a first query",
        Step::FirstExportPassed => "export a result that passes the PII check",
    }
}

/// The resume payload for a user returning at `now`: only mid-flow, after at least [`AWAY`]
/// without activity (29 minutes is not a return; 30 is).
pub fn resume(p: &Progress, now: OffsetDateTime) -> Option<Resume> {
    let step = p.next_step()?;
    let last = p.last_active.or(p.steps[0])?;
    let away = now - last;
    if !p.mid_flow() || away < AWAY {
        return None;
    }
    let screen = p.position.as_ref().map(|(s, _, _)| s.clone());
    Some(Resume {
        step,
        banner: format!(
            "Welcome back! You were about to {}{} — pick up where you left off.",
            step_text(step),
            screen
                .as_deref()
                .map(|s| format!(" (on {s})"))
                .unwrap_or_default()
        ),
        screen,
        dataset_id: p.dataset_id,
        query_id: p.query_id,
        away_minutes: away.whole_minutes(),
    })
}

/// One rule of the nudge table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct NudgeRule {
    pub id: String,
    /// The step the user has to do next for this nudge to apply.
    pub next_step: Step,
    /// Only after this many minutes without activity (0: at once).
    #[serde(default)]
    pub idle_minutes: i64,
    pub text: String,
    /// Where the nudge's button leads (an API path or a screen id).
    pub action: String,
    /// After a dismissal, the nudge comes back after this many days; never when absent.
    #[serde(default)]
    pub returns_after_days: Option<i64>,
}

/// The next best action for `p` at `now`: the first rule of `rules` (in table order) for the
/// user's next step, idle long enough, neither snoozed nor dismissed (unless its rule brings it
/// back after a dismissal).
pub fn next_nudge<'a>(
    p: &Progress,
    rules: &'a [NudgeRule],
    now: OffsetDateTime,
) -> Option<&'a NudgeRule> {
    let step = p.next_step()?;
    let idle = p.last_active.map_or(Duration::ZERO, |l| now - l);
    rules.iter().find(|r| {
        r.next_step == step
            && idle >= Duration::minutes(r.idle_minutes)
            && p.snoozed.get(&r.id).is_none_or(|until| *until <= now)
            && p.dismissed.get(&r.id).is_none_or(|at| {
                r.returns_after_days
                    .is_some_and(|days| now - *at >= Duration::days(days))
            })
    })
}

/// Drop-off at one step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DropOff {
    pub step: Step,
    /// Users who reached the step.
    pub reached: u64,
    /// …and the next one within the window (`None` at the last step).
    pub completed: Option<u64>,
    /// …and not the next one within the window.
    pub dropped: Option<u64>,
    /// Time from this step to the next, nearest-rank median and 90th percentile, in seconds, of
    /// the users who completed it.
    pub median_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
}

/// Drop-off per step of `users`: from each step, the next within `window`.
pub fn dropoff<'a>(
    users: impl Iterator<Item = &'a Progress> + Clone,
    window: Duration,
) -> Vec<DropOff> {
    Step::ALL
        .iter()
        .enumerate()
        .map(|(k, step)| {
            let reached = users.clone().filter(|p| p.steps[k].is_some()).count() as u64;
            if k == 3 {
                return DropOff {
                    step: *step,
                    reached,
                    completed: None,
                    dropped: None,
                    median_seconds: None,
                    p90_seconds: None,
                };
            }
            let mut times: Vec<i64> = users
                .clone()
                .filter_map(|p| {
                    let d = p.steps[k + 1]? - p.steps[k]?;
                    (d <= window).then_some(d.whole_seconds())
                })
                .collect();
            times.sort_unstable();
            let completed = times.len() as u64;
            DropOff {
                step: *step,
                reached,
                completed: Some(completed),
                dropped: Some(reached - completed),
                median_seconds: percentile(&times, 50),
                p90_seconds: percentile(&times, 90),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn mid_flow_user(joined: OffsetDateTime) -> Progress {
        let mut p = Progress::default();
        p.reached(Step::SignedUp, joined);
        p.active(joined);
        p.reached(Step::DatasetUploaded, joined + Duration::minutes(5));
        p.active(joined + Duration::minutes(5));
        p.dataset_id = Some(Uuid::from_u128(7));
        p.position = Some((
            "query-editor".into(),
            Step::FirstQuery,
            joined + Duration::minutes(6),
        ));
        p.active(joined + Duration::minutes(6));
        p
    }

    #[test]
    fn a_user_back_after_31_minutes_gets_a_resume_payload_and_after_29_does_not() {
        let t = datetime!(2026-03-02 10:00 UTC);
        let p = mid_flow_user(t);
        let last = t + Duration::minutes(6);
        assert_eq!(resume(&p, last + Duration::minutes(29)), None);
        let r = resume(&p, last + Duration::minutes(31)).unwrap();
        assert_eq!(r.step, Step::FirstQuery);
        assert_eq!(r.screen.as_deref(), Some("query-editor"));
        assert_eq!(r.dataset_id, Some(Uuid::from_u128(7)));
        assert_eq!(r.away_minutes, 31);
        assert!(r.banner.contains("run a first query"), "{}", r.banner);
        // Exactly 30 minutes is a return.
        assert!(resume(&p, last + Duration::minutes(30)).is_some());
    }

    #[test]
    fn nobody_is_resumed_once_the_flow_is_done() {
        let t = datetime!(2026-03-02 10:00 UTC);
        let mut p = mid_flow_user(t);
        p.reached(Step::FirstQuery, t + Duration::minutes(7));
        p.reached(Step::FirstExportPassed, t + Duration::minutes(8));
        assert_eq!(resume(&p, t + Duration::days(2)), None);
        assert_eq!(p.next_step(), None);
    }

    fn rules() -> Vec<NudgeRule> {
        serde_json::from_str(
            r#"[
              {"id": "first-query", "next_step": "first_query", "text": "Ask your data a question", "action": "query-editor", "returns_after_days": 3},
              {"id": "upload", "next_step": "dataset_uploaded", "idle_minutes": 10, "text": "Upload a CSV", "action": "upload"}
            ]"#,
        )
        .unwrap()
    }

    #[test]
    fn nudges_follow_the_table_and_a_dismissal_holds_until_the_rule_brings_it_back() {
        let t = datetime!(2026-03-02 10:00 UTC);
        let rules = rules();
        let mut p = mid_flow_user(t);
        assert_eq!(
            next_nudge(&p, &rules, t + Duration::hours(1)).unwrap().id,
            "first-query"
        );
        p.dismissed
            .insert("first-query".into(), t + Duration::hours(1));
        assert_eq!(next_nudge(&p, &rules, t + Duration::hours(2)), None);
        assert_eq!(
            next_nudge(&p, &rules, t + Duration::days(3)),
            None,
            "3 days less an hour"
        );
        assert_eq!(
            next_nudge(&p, &rules, t + Duration::days(3) + Duration::hours(1))
                .unwrap()
                .id,
            "first-query"
        );
        // A snooze holds until its time.
        let mut q = mid_flow_user(t);
        q.snoozed
            .insert("first-query".into(), t + Duration::hours(5));
        assert_eq!(next_nudge(&q, &rules, t + Duration::hours(4)), None);
        assert!(next_nudge(&q, &rules, t + Duration::hours(5)).is_some());
        // The upload nudge waits for 10 idle minutes.
        let mut fresh = Progress::default();
        fresh.reached(Step::SignedUp, t);
        fresh.active(t);
        assert_eq!(next_nudge(&fresh, &rules, t + Duration::minutes(9)), None);
        assert_eq!(
            next_nudge(&fresh, &rules, t + Duration::minutes(10))
                .unwrap()
                .id,
            "upload"
        );
    }

    #[test]
    fn dropoff_counts_reached_completed_and_dropped_within_the_window() {
        let t = datetime!(2026-03-02 10:00 UTC);
        let user = |gaps: &[i64]| {
            let mut p = Progress::default();
            let mut at = t;
            p.reached(Step::SignedUp, at);
            for (k, g) in gaps.iter().enumerate() {
                at += Duration::hours(*g);
                p.reached(Step::ALL[k + 1], at);
            }
            p
        };
        let users = [user(&[1, 2, 3]), user(&[4, 24 * 20]), user(&[])];
        let d = dropoff(users.iter(), Duration::days(14));
        assert_eq!(
            (d[0].reached, d[0].completed, d[0].dropped),
            (3, Some(2), Some(1))
        );
        assert_eq!(d[0].median_seconds, Some(3_600));
        assert_eq!(d[0].p90_seconds, Some(4 * 3_600));
        // The second user's query came 20 days after the upload: outside the window.
        assert_eq!(
            (d[1].reached, d[1].completed, d[1].dropped),
            (2, Some(1), Some(1))
        );
        assert_eq!((d[3].reached, d[3].completed), (1, None));
    }

    #[test]
    fn reports_are_validated() {
        let now = datetime!(2026-03-02 10:00 UTC);
        let o = Onboarding::default();
        let bad = OnboardingCommand::ReportPosition {
            screen: "Query Editor".into(),
            step: Step::FirstQuery,
        };
        assert!(o.decide(&bad, now).is_err());
        let past = OnboardingCommand::Snooze {
            nudge: "upload".into(),
            until: now,
        };
        assert_eq!(o.decide(&past, now), Err(OnboardingError::SnoozeInPast));
    }
}
