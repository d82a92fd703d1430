//! The decide/evolve kernel every aggregate follows, and the given/when/then test harness.
//!
//! An aggregate's `decide` turns a command and the current state into new events (or a domain
//! error); `evolve` folds one event into the state. Both are pure and synchronous, so the command
//! executor can keep state hot in memory, snapshot it, and replay it from any point.

use serde::{Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

/// A domain event that can be stored: a stable type name, a schema version and a JSON payload.
pub trait DomainEvent: Sized {
    /// The stable event type (`tenant.signed_up`), written into the envelope.
    fn event_type(&self) -> &'static str;
    /// The payload schema version written with this event.
    fn schema_version(&self) -> u16 {
        1
    }
    /// The payload, as JSON.
    fn to_payload(&self) -> serde_json::Value;
    /// Rebuild an event from a stored type and an (already upcast) payload.
    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError>;
}

/// A stored event that this aggregate cannot read back: a bug or a missing upcaster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventDecodeError {
    #[error("unknown event type {event_type} v{schema_version}")]
    UnknownType {
        event_type: String,
        schema_version: u16,
    },
    #[error("payload of {event_type} is malformed: {reason}")]
    Malformed { event_type: String, reason: String },
}

impl EventDecodeError {
    /// Helper for `from_stored` implementations: parse a payload or say why not.
    pub fn parse<T: DeserializeOwned>(event_type: &str, payload: &[u8]) -> Result<T, Self> {
        serde_json::from_slice(payload).map_err(|e| EventDecodeError::Malformed {
            event_type: event_type.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// An event-sourced aggregate. `Default` is the state before its first event.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    type Command;
    type Event: DomainEvent + Send;
    type Error: std::error::Error + PartialEq + Send + Sync + 'static;

    /// Decide what happens: pure, no IO; `now` is the only clock.
    fn decide(
        &self,
        command: &Self::Command,
        now: OffsetDateTime,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// Fold one event into the state.
    fn evolve(&mut self, event: &Self::Event);
}

/// Given/when/then harness for aggregate tests.
///
/// ```text
/// given([TenantEvent::SignedUp{..}]).when(TenantCommand::Rename{..}).then([TenantEvent::Renamed{..}]);
/// ```
pub mod testing {
    use super::*;
    use std::fmt::Debug;

    /// A fixed instant for tests: the domain never reads a clock.
    pub fn test_now() -> OffsetDateTime {
        time::macros::datetime!(2026-02-16 09:30 UTC)
    }

    pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
        let mut state = A::default();
        for e in events {
            state.evolve(&e);
        }
        Given { state }
    }

    #[derive(Debug)]
    pub struct Given<A> {
        state: A,
    }

    impl<A: Aggregate> Given<A> {
        pub fn when(self, command: A::Command) -> When<A> {
            let result = self.state.decide(&command, test_now());
            When {
                state: self.state,
                result,
            }
        }
    }

    #[derive(Debug)]
    pub struct When<A: Aggregate> {
        state: A,
        result: Result<Vec<A::Event>, A::Error>,
    }

    impl<A: Aggregate> When<A>
    where
        A::Event: PartialEq + Debug,
    {
        /// Assert the decision produced exactly these events; returns the evolved state.
        #[track_caller]
        pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
            let expected: Vec<_> = expected.into_iter().collect();
            match self.result {
                Ok(events) => {
                    assert_eq!(events, expected, "decide produced other events");
                    let mut state = self.state;
                    for e in &events {
                        state.evolve(e);
                    }
                    state
                }
                Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
            }
        }

        /// Assert the decision failed with exactly this error.
        #[track_caller]
        pub fn then_err(self, expected: A::Error) {
            match self.result {
                Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
                Err(e) => assert_eq!(e, expected),
            }
        }
    }
}
