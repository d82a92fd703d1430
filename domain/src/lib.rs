//! Tenantry's domain: identifiers, the decide/evolve kernel and the aggregates.
//!
//! Architecture invariant: this crate does no IO, has no async, and never reads a clock or a random
//! source. Time and identifiers come in as arguments.

pub mod aggregate;
pub mod audit;
pub mod billing;
pub mod dataset;
pub mod drill;
pub mod feedback;
pub mod identity;
pub mod ids;
pub mod insights;
pub mod onboarding;
pub mod personal;
pub mod pii;
pub mod plans;
pub mod platform;
pub mod preset;
pub mod quota;
pub mod replay;
pub mod scim;
pub mod sso;
pub mod tenant;

pub use aggregate::{Aggregate, DomainEvent, EventDecodeError};
pub use identity::{Email, Flag, PersonName, PlatformRole, TenantRole};
pub use ids::{TenantId, UserId};

/// Every event type the domain can produce, with the schema version it writes now: the catalogue
/// that `docs/events.md` must match exactly (a test below checks it).
pub fn all_event_types() -> Vec<(&'static str, u16)> {
    [
        tenant::TenantEvent::ALL_EVENT_TYPES,
        platform::PlatformEvent::ALL_EVENT_TYPES,
        plans::RegistryEvent::ALL_EVENT_TYPES,
        dataset::DatasetEvent::ALL_EVENT_TYPES,
        dataset::DataFact::ALL_EVENT_TYPES,
        preset::PresetEvent::ALL_EVENT_TYPES,
        quota::UsageEvent::ALL_EVENT_TYPES,
        onboarding::OnboardingEvent::ALL_EVENT_TYPES,
        feedback::FeedbackEvent::ALL_EVENT_TYPES,
        feedback::SettingsEvent::ALL_EVENT_TYPES,
        billing::AccountEvent::ALL_EVENT_TYPES,
        billing::BookEvent::ALL_EVENT_TYPES,
        billing::ReconciliationEvent::ALL_EVENT_TYPES,
        audit::AuditEvent::ALL_EVENT_TYPES,
        drill::DrillEvent::ALL_EVENT_TYPES,
        sso::ConfigEvent::ALL_EVENT_TYPES,
        sso::LoginEvent::ALL_EVENT_TYPES,
        scim::ScimEvent::ALL_EVENT_TYPES,
    ]
    .concat()
}

#[cfg(test)]
mod catalogue {
    use std::collections::BTreeMap;

    /// Every `| \`type\` | v |` row of the catalogue's tables.
    fn documented() -> Vec<(String, u16)> {
        include_str!("../../docs/events.md")
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                let version = cells.next()?.parse().ok()?;
                Some((name.to_owned(), version))
            })
            .collect()
    }

    #[test]
    fn docs_events_md_lists_exactly_the_event_types_the_domain_produces() {
        let code: BTreeMap<String, u16> = super::all_event_types()
            .into_iter()
            .map(|(t, v)| (t.to_owned(), v))
            .collect();
        assert_eq!(
            code.len(),
            super::all_event_types().len(),
            "an event type is produced by two aggregates"
        );
        let mut docs = BTreeMap::new();
        for (name, version) in documented() {
            if let Some(other) = docs.insert(name.clone(), version) {
                assert_eq!(other, version, "{name} is documented with two versions");
            }
        }
        for (name, version) in &code {
            assert_eq!(
                docs.get(name),
                Some(version),
                "{name} v{version} is produced but docs/events.md says {:?}",
                docs.get(name)
            );
        }
        for name in docs.keys() {
            assert!(
                code.contains_key(name),
                "docs/events.md lists {name}, which nothing produces"
            );
        }
    }
}
