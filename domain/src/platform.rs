//! The `Platform` aggregate: the operators of the product (support, PM, ops, finance) and their
//! tokens. It lives in the platform tenant's stream `operators`.

use crate::UserId;
use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::identity::{IssuedToken, PlatformRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

pub const STREAM: &str = "operators";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformCommand {
    IssueOperatorToken {
        operator_id: UserId,
        role: PlatformRole,
        token: IssuedToken,
    },
    RevokeToken {
        token_id: Uuid,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorTokenIssued {
    pub operator_id: UserId,
    pub role: PlatformRole,
    #[serde(flatten)]
    pub token: IssuedToken,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorTokenRevoked {
    pub token_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformEvent {
    OperatorTokenIssued(OperatorTokenIssued),
    OperatorTokenRevoked(OperatorTokenRevoked),
}

impl PlatformEvent {
    /// Every event type this aggregate writes, with the schema version it writes.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] =
        &[("operator.token_issued", 1), ("operator.token_revoked", 1)];
}

impl DomainEvent for PlatformEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PlatformEvent::OperatorTokenIssued(_) => "operator.token_issued",
            PlatformEvent::OperatorTokenRevoked(_) => "operator.token_revoked",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            PlatformEvent::OperatorTokenIssued(e) => serde_json::to_value(e),
            PlatformEvent::OperatorTokenRevoked(e) => serde_json::to_value(e),
        }
        .expect("platform events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("operator.token_issued", 1) => Ok(PlatformEvent::OperatorTokenIssued(
                EventDecodeError::parse(event_type, payload)?,
            )),
            ("operator.token_revoked", 1) => Ok(PlatformEvent::OperatorTokenRevoked(
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
pub enum PlatformError {
    #[error("no such token")]
    UnknownToken,
    #[error("the token is already revoked")]
    AlreadyRevoked,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Token id → revoked?
    pub tokens: BTreeMap<Uuid, bool>,
}

impl Aggregate for Platform {
    type Command = PlatformCommand;
    type Event = PlatformEvent;
    type Error = PlatformError;

    fn decide(
        &self,
        command: &PlatformCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<PlatformEvent>, PlatformError> {
        match command {
            PlatformCommand::IssueOperatorToken {
                operator_id,
                role,
                token,
            } => Ok(vec![PlatformEvent::OperatorTokenIssued(
                OperatorTokenIssued {
                    operator_id: *operator_id,
                    role: *role,
                    token: token.clone(),
                },
            )]),
            PlatformCommand::RevokeToken { token_id } => match self.tokens.get(token_id) {
                None => Err(PlatformError::UnknownToken),
                Some(true) => Err(PlatformError::AlreadyRevoked),
                Some(false) => Ok(vec![PlatformEvent::OperatorTokenRevoked(
                    OperatorTokenRevoked {
                        token_id: *token_id,
                    },
                )]),
            },
        }
    }

    fn evolve(&mut self, event: &PlatformEvent) {
        match event {
            PlatformEvent::OperatorTokenIssued(e) => {
                self.tokens.insert(e.token.token_id, false);
            }
            PlatformEvent::OperatorTokenRevoked(e) => {
                self.tokens.insert(e.token_id, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};

    fn issued(n: u128) -> PlatformEvent {
        PlatformEvent::OperatorTokenIssued(OperatorTokenIssued {
            operator_id: UserId::from_uuid(Uuid::from_u128(n)),
            role: PlatformRole::Ops,
            token: IssuedToken {
                token_id: Uuid::from_u128(n),
                token_sha256: "00".repeat(32),
                expires_at: test_now(),
            },
        })
    }

    #[test]
    fn operator_tokens_are_issued_and_revoked_once() {
        let PlatformEvent::OperatorTokenIssued(e) = issued(1) else {
            unreachable!()
        };
        given::<Platform>([])
            .when(PlatformCommand::IssueOperatorToken {
                operator_id: e.operator_id,
                role: e.role,
                token: e.token.clone(),
            })
            .then([issued(1)]);
        let revoke = PlatformCommand::RevokeToken {
            token_id: Uuid::from_u128(1),
        };
        given::<Platform>([issued(1)]).when(revoke.clone()).then([
            PlatformEvent::OperatorTokenRevoked(OperatorTokenRevoked {
                token_id: Uuid::from_u128(1),
            }),
        ]);
        given::<Platform>([])
            .when(revoke)
            .then_err(PlatformError::UnknownToken);
    }

    #[test]
    fn every_platform_event_type_round_trips_and_is_catalogued() {
        let events = [
            issued(2),
            PlatformEvent::OperatorTokenRevoked(OperatorTokenRevoked {
                token_id: Uuid::from_u128(2),
            }),
        ];
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        assert_eq!(kinds, PlatformEvent::ALL_EVENT_TYPES);
        for e in events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back =
                PlatformEvent::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(back, e);
        }
    }
}
