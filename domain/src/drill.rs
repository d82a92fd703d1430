//! The `DrillLog` aggregate: alert drills (issue 15, item 3). A drill injects faults (an error
//! ratio, added latency) into the requests whose path starts with a prefix, for a bounded time,
//! so that operators see the page alert fire and clear. It lives in the platform tenant's stream
//! `drills`; the fault injection itself is the edge's (`api`), this records who ran which drill
//! and when it stopped.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub const STREAM: &str = "drills";

/// What a drill injects, and until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillStarted {
    pub drill_id: Uuid,
    /// Share of matching requests answered 503 `drill-injected`, 0 to 1.
    pub error_ratio: f64,
    /// Added to every matching request, in milliseconds.
    pub added_latency_ms: u64,
    /// Requests whose path starts with this are affected (`/v1/ops/` never is).
    pub route_prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillStopped {
    pub drill_id: Uuid,
    /// `stopped` (asked for) or `replaced` (a new drill started over it).
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub stopped_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DrillEvent {
    Started(DrillStarted),
    Stopped(DrillStopped),
}

impl DrillEvent {
    /// Every event type this aggregate writes, with the schema version it writes.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] =
        &[("ops.drill_started", 1), ("ops.drill_stopped", 1)];
}

impl DomainEvent for DrillEvent {
    fn event_type(&self) -> &'static str {
        match self {
            DrillEvent::Started(_) => "ops.drill_started",
            DrillEvent::Stopped(_) => "ops.drill_stopped",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            DrillEvent::Started(e) => serde_json::to_value(e),
            DrillEvent::Stopped(e) => serde_json::to_value(e),
        }
        .expect("drill events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("ops.drill_started", 1) => Ok(DrillEvent::Started(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("ops.drill_stopped", 1) => Ok(DrillEvent::Stopped(EventDecodeError::parse(
                event_type, payload,
            )?)),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum DrillCommand {
    /// Start a drill; one still running (and not expired at `now`) is stopped first.
    Start(DrillStarted),
    /// Stop the running drill, if any (and not expired): nothing to record otherwise.
    Stop,
}

/// The drills' record: the one last started, if it has not stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillLog {
    pub running: Option<DrillStarted>,
    pub drills: u64,
}

impl DrillLog {
    /// The drill in force at `now`: started, not stopped, not expired.
    pub fn active(&self, now: OffsetDateTime) -> Option<&DrillStarted> {
        self.running.as_ref().filter(|d| d.expires_at > now)
    }
}

impl Aggregate for DrillLog {
    type Command = DrillCommand;
    type Event = DrillEvent;
    type Error = std::convert::Infallible;

    fn decide(
        &self,
        command: &DrillCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<DrillEvent>, Self::Error> {
        let stop = |reason: &str| {
            self.active(now).map(|d| {
                DrillEvent::Stopped(DrillStopped {
                    drill_id: d.drill_id,
                    reason: reason.to_owned(),
                    stopped_at: now,
                })
            })
        };
        Ok(match command {
            DrillCommand::Start(started) => stop("replaced")
                .into_iter()
                .chain([DrillEvent::Started(started.clone())])
                .collect(),
            DrillCommand::Stop => stop("stopped").into_iter().collect(),
        })
    }

    fn evolve(&mut self, event: &DrillEvent) {
        match event {
            DrillEvent::Started(e) => {
                self.running = Some(e.clone());
                self.drills += 1;
            }
            DrillEvent::Stopped(e) => {
                if self
                    .running
                    .as_ref()
                    .is_some_and(|d| d.drill_id == e.drill_id)
                {
                    self.running = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};

    fn started(n: u128, minutes: i64) -> DrillStarted {
        DrillStarted {
            drill_id: Uuid::from_u128(n),
            error_ratio: 0.5,
            added_latency_ms: 20,
            route_prefix: "/v1/plans".into(),
            started_at: test_now(),
            expires_at: test_now() + time::Duration::minutes(minutes),
        }
    }

    fn stopped(n: u128, reason: &str) -> DrillEvent {
        DrillEvent::Stopped(DrillStopped {
            drill_id: Uuid::from_u128(n),
            reason: reason.into(),
            stopped_at: test_now(),
        })
    }

    #[test]
    fn a_drill_starts_replaces_the_running_one_and_stops_once() {
        given::<DrillLog>([])
            .when(DrillCommand::Start(started(1, 5)))
            .then([DrillEvent::Started(started(1, 5))]);
        given::<DrillLog>([DrillEvent::Started(started(1, 5))])
            .when(DrillCommand::Start(started(2, 5)))
            .then([stopped(1, "replaced"), DrillEvent::Started(started(2, 5))]);
        given::<DrillLog>([DrillEvent::Started(started(1, 5))])
            .when(DrillCommand::Stop)
            .then([stopped(1, "stopped")]);
        given::<DrillLog>([DrillEvent::Started(started(1, 5)), stopped(1, "stopped")])
            .when(DrillCommand::Stop)
            .then([]);
        // An expired drill has stopped by itself: nothing to record.
        given::<DrillLog>([DrillEvent::Started(started(1, -1))])
            .when(DrillCommand::Stop)
            .then([]);
    }

    #[test]
    fn every_drill_event_type_round_trips_and_is_catalogued() {
        let events = [DrillEvent::Started(started(3, 5)), stopped(3, "stopped")];
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        assert_eq!(kinds, DrillEvent::ALL_EVENT_TYPES);
        for e in events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back = DrillEvent::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(back, e);
        }
    }
}
