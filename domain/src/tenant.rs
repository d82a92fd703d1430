//! The `Tenant` aggregate: sign-up with a validated name, rename, and the current plan.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// The stream that holds one tenant's lifecycle events.
pub fn stream_id(tenant: crate::TenantId) -> String {
    format!("tenant-{tenant}")
}

/// A tenant's display name: trimmed, 1 to 100 characters, no control or bidirectional-override
/// characters (they make names that render differently from what they are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    #[error("tenant name is empty")]
    Empty,
    #[error("tenant name is longer than {max} characters")]
    TooLong { max: usize },
    #[error("tenant name contains a control or invisible formatting character")]
    ForbiddenCharacter,
}

impl TenantName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, TenantNameError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(TenantNameError::Empty);
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(TenantNameError::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        if name.chars().any(is_forbidden) {
            return Err(TenantNameError::ForbiddenCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Control characters, and the Unicode format characters used for spoofing: bidi embeddings and
/// overrides, isolates, zero-width characters and the byte-order mark.
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl TryFrom<String> for TenantName {
    type Error = TenantNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantName> for String {
    fn from(value: TenantName) -> Self {
        value.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plans of SPEC §4. Their limits and prices live in the plan registry, not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    #[default]
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantCommand {
    SignUp { name: TenantName },
    Rename { name: TenantName },
    ChangePlan { plan: Plan },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TenantEvent {
    SignedUp {
        name: TenantName,
        plan: Plan,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Renamed {
        from: TenantName,
        to: TenantName,
    },
    PlanChanged {
        from: Plan,
        to: Plan,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TenantEvent::SignedUp { .. } => "tenant.signed_up",
            TenantEvent::Renamed { .. } => "tenant.renamed",
            TenantEvent::PlanChanged { .. } => "plan.changed",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("tenant events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        #[derive(Deserialize)]
        struct SignedUp {
            name: TenantName,
            plan: Plan,
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        }
        #[derive(Deserialize)]
        struct Renamed {
            from: TenantName,
            to: TenantName,
        }
        #[derive(Deserialize)]
        struct PlanChanged {
            from: Plan,
            to: Plan,
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        }
        match (event_type, schema_version) {
            ("tenant.signed_up", 1) => {
                let p: SignedUp = EventDecodeError::parse(event_type, payload)?;
                Ok(TenantEvent::SignedUp {
                    name: p.name,
                    plan: p.plan,
                    at: p.at,
                })
            }
            ("tenant.renamed", 1) => {
                let p: Renamed = EventDecodeError::parse(event_type, payload)?;
                Ok(TenantEvent::Renamed {
                    from: p.from,
                    to: p.to,
                })
            }
            ("plan.changed", 1) => {
                let p: PlanChanged = EventDecodeError::parse(event_type, payload)?;
                Ok(TenantEvent::PlanChanged {
                    from: p.from,
                    to: p.to,
                    at: p.at,
                })
            }
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("this tenant has already signed up")]
    AlreadySignedUp,
    #[error("no such tenant")]
    NotFound,
    #[error("the tenant already has this name")]
    SameName,
    #[error("the tenant is already on the {0} plan")]
    SamePlan(&'static str),
}

/// What the executor keeps hot for one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: Option<TenantName>,
    pub plan: Plan,
    #[serde(with = "time::serde::rfc3339::option")]
    pub signed_up_at: Option<OffsetDateTime>,
}

impl Aggregate for Tenant {
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;

    fn decide(
        &self,
        command: &TenantCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        match (command, &self.name) {
            (TenantCommand::SignUp { .. }, Some(_)) => Err(TenantError::AlreadySignedUp),
            (TenantCommand::SignUp { name }, None) => Ok(vec![TenantEvent::SignedUp {
                name: name.clone(),
                plan: Plan::Free,
                at: now,
            }]),
            (_, None) => Err(TenantError::NotFound),
            (TenantCommand::Rename { name }, Some(current)) if name == current => {
                Err(TenantError::SameName)
            }
            (TenantCommand::Rename { name }, Some(current)) => Ok(vec![TenantEvent::Renamed {
                from: current.clone(),
                to: name.clone(),
            }]),
            (TenantCommand::ChangePlan { plan }, Some(_)) if *plan == self.plan => {
                Err(TenantError::SamePlan(plan.as_str()))
            }
            (TenantCommand::ChangePlan { plan }, Some(_)) => Ok(vec![TenantEvent::PlanChanged {
                from: self.plan,
                to: *plan,
                at: now,
            }]),
        }
    }

    fn evolve(&mut self, event: &TenantEvent) {
        match event {
            TenantEvent::SignedUp { name, plan, at } => {
                self.name = Some(name.clone());
                self.plan = *plan;
                self.signed_up_at = Some(*at);
            }
            TenantEvent::Renamed { to, .. } => self.name = Some(to.clone()),
            TenantEvent::PlanChanged { to, .. } => self.plan = *to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn signed_up(n: &str) -> TenantEvent {
        TenantEvent::SignedUp {
            name: name(n),
            plan: Plan::Free,
            at: test_now(),
        }
    }

    #[test]
    fn sign_up_starts_on_the_free_plan() {
        let state = given::<Tenant>([])
            .when(TenantCommand::SignUp { name: name("Acme") })
            .then([signed_up("Acme")]);
        assert_eq!(state.plan, Plan::Free);
    }

    #[test]
    fn signing_up_twice_is_refused() {
        given::<Tenant>([signed_up("Acme")])
            .when(TenantCommand::SignUp {
                name: name("Acme 2"),
            })
            .then_err(TenantError::AlreadySignedUp);
    }

    #[test]
    fn rename_records_old_and_new_name() {
        let state = given::<Tenant>([signed_up("Acme")])
            .when(TenantCommand::Rename {
                name: name("Acme Corp"),
            })
            .then([TenantEvent::Renamed {
                from: name("Acme"),
                to: name("Acme Corp"),
            }]);
        assert_eq!(state.name, Some(name("Acme Corp")));
    }

    #[test]
    fn rename_to_the_same_name_is_refused() {
        given::<Tenant>([signed_up("Acme")])
            .when(TenantCommand::Rename { name: name("Acme") })
            .then_err(TenantError::SameName);
    }

    #[test]
    fn commands_on_a_tenant_that_never_signed_up_are_refused() {
        given::<Tenant>([])
            .when(TenantCommand::Rename { name: name("X") })
            .then_err(TenantError::NotFound);
        given::<Tenant>([])
            .when(TenantCommand::ChangePlan { plan: Plan::Pro })
            .then_err(TenantError::NotFound);
    }

    #[test]
    fn change_plan_moves_the_current_plan() {
        let state = given::<Tenant>([signed_up("Acme")])
            .when(TenantCommand::ChangePlan { plan: Plan::Pro })
            .then([TenantEvent::PlanChanged {
                from: Plan::Free,
                to: Plan::Pro,
                at: test_now(),
            }]);
        assert_eq!(state.plan, Plan::Pro);
    }

    #[test]
    fn changing_to_the_current_plan_is_refused() {
        given::<Tenant>([signed_up("Acme")])
            .when(TenantCommand::ChangePlan { plan: Plan::Free })
            .then_err(TenantError::SamePlan("free"));
    }

    #[test]
    fn tenant_names_are_parsed_at_the_edge() {
        assert_eq!(name("  Acme  ").as_str(), "Acme");
        assert_eq!(TenantName::parse("   "), Err(TenantNameError::Empty));
        assert_eq!(
            TenantName::parse(&"x".repeat(101)),
            Err(TenantNameError::TooLong { max: 100 })
        );
        assert!(TenantName::parse(&"é".repeat(100)).is_ok());
        for hostile in [
            "a\u{0000}b",
            "a\nb",
            "evil\u{202E}gpj.exe",
            "zero\u{200B}width",
        ] {
            assert_eq!(
                TenantName::parse(hostile),
                Err(TenantNameError::ForbiddenCharacter),
                "{hostile:?}"
            );
        }
        assert!(TenantName::parse("Ünïcødé 株式会社 🚀").is_ok());
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let events = [
            signed_up("Acme"),
            TenantEvent::Renamed {
                from: name("Acme"),
                to: name("B"),
            },
            TenantEvent::PlanChanged {
                from: Plan::Free,
                to: Plan::Enterprise,
                at: test_now(),
            },
        ];
        for e in events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back =
                TenantEvent::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(back, e);
        }
        assert!(matches!(
            TenantEvent::from_stored("tenant.signed_up", 9, b"{}"),
            Err(EventDecodeError::UnknownType { .. })
        ));
    }

    #[test]
    fn a_stored_name_that_fails_validation_is_not_read_back_silently() {
        let err =
            TenantEvent::from_stored("tenant.renamed", 1, br#"{"from":"a","to":""}"#).unwrap_err();
        assert!(matches!(err, EventDecodeError::Malformed { .. }));
    }
}
