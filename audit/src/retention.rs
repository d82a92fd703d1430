//! The retention payloads a bundle proves things with (ADR 020): the policy event's rules and the
//! `erasure.applied` event's subject. Both are parsed from the events' stored payloads, never
//! taken from the bundle's own word.

use serde::{Deserialize, Serialize};

/// The event type of a tenant's retention policy; its payload is a [`RetentionPolicy`].
pub const POLICY_EVENT_TYPE: &str = "retention.policy_set";
/// The event type of an applied erasure; its payload is an [`Erasure`].
pub const ERASURE_EVENT_TYPE: &str = "erasure.applied";
/// The member a sealed (crypto-shredded) personal field's JSON object carries. A personal field
/// past its window whose value is anything but `null` or such an object is plaintext.
pub const SEALED_MEMBER: &str = "$sealed";

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Which personal data is kept how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub rules: Vec<RetentionRule>,
}

/// One rule: the fields (JSON pointers into the payload) of some event types, kept `keep_days`
/// after the event's `occurred_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub name: String,
    pub event_types: Vec<String>,
    pub fields: Vec<String>,
    pub keep_days: u32,
}

impl RetentionRule {
    /// The window in microseconds.
    pub fn keep_micros(&self) -> i64 {
        i64::from(self.keep_days) * MICROS_PER_DAY
    }
}

/// What an `erasure.applied` event erased and under which rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    /// The name of the policy rule that required it.
    pub rule: String,
    /// The tenant sequences of the erased events.
    pub sequences: Vec<u64>,
}
