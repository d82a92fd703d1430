//! A tenant's state at a moment, rebuilt from its events alone (issue 12, item 8): name, plan in
//! force, members and roles, flag overrides, presets and billing mode. The same pure fold serves
//! `tenantry-verify replay` (over a verified bundle's events) and `GET /v1/audit/state` (over the
//! log), so the two answers agree by construction; a test through the real server checks they do.
//!
//! Events are given in tenant-sequence order with their stream, type, schema version and stored
//! payload; only the streams that carry the replayed state are read (the tenant's stream, its
//! presets' streams, its billing account), and an event of those streams that cannot be decoded
//! stops the replay (fail closed). Personal data (emails, names of people) is not part of the
//! answer.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::billing::AccountEvent;
use crate::preset::{Preset, PresetEvent};
use crate::tenant::{Tenant, TenantEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// A member as the replay shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub user_id: String,
    pub role: String,
}

/// A preset as the replay shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetState {
    pub preset_id: String,
    pub name: String,
    pub version: u32,
    pub deleted: bool,
}

/// The tenant at `at`: the state after every event recorded at or before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    pub tenant_id: String,
    /// RFC 3339, microseconds.
    pub at: String,
    /// How many of the tenant's events were folded (tenant sequences `0..events`).
    pub events: u64,
    pub name: Option<String>,
    /// The plan in force at `at` (a scheduled downgrade counts from its period on).
    pub plan: String,
    pub members: Vec<MemberState>,
    /// Flag overrides set for this tenant (defaults are configuration, not history).
    pub flags: BTreeMap<String, bool>,
    pub presets: Vec<PresetState>,
    /// `null` until the mode was first changed (the default mode, `shadow`, applies).
    pub billing_mode: Option<String>,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("event {sequence} ({stream}) cannot be replayed: {source}")]
    Decode {
        sequence: u64,
        stream: String,
        source: EventDecodeError,
    },
    #[error("event {sequence} is out of order: {expected} expected")]
    OutOfOrder { sequence: u64, expected: u64 },
}

/// The fold. Feed it the tenant's events from sequence 0, in order, up to the moment asked.
#[derive(Debug, Default)]
pub struct Replay {
    tenant: Tenant,
    presets: BTreeMap<String, Preset>,
    billing_mode: Option<String>,
    events: u64,
}

impl Replay {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events were applied.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn apply(
        &mut self,
        sequence: u64,
        stream: &str,
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<(), ReplayError> {
        if sequence != self.events {
            return Err(ReplayError::OutOfOrder {
                sequence,
                expected: self.events,
            });
        }
        // Sealed personal fields (ADR 032) cannot be opened here: they decode as `[sealed]`.
        let opened = crate::personal::without_keys(event_type, schema_version, payload);
        let (schema_version, payload) = match &opened {
            Some((v, p)) => (*v, &p[..]),
            None => (schema_version, payload),
        };
        let decode = |source| ReplayError::Decode {
            sequence,
            stream: stream.to_owned(),
            source,
        };
        if stream.starts_with("tenant-") {
            let e =
                TenantEvent::from_stored(event_type, schema_version, payload).map_err(decode)?;
            self.tenant.evolve(&e);
        } else if stream.starts_with("preset-") {
            let e =
                PresetEvent::from_stored(event_type, schema_version, payload).map_err(decode)?;
            self.presets
                .entry(stream.to_owned())
                .or_default()
                .evolve(&e);
        } else if stream == crate::billing::ACCOUNT_STREAM {
            let AccountEvent::ModeChanged(m) =
                AccountEvent::from_stored(event_type, schema_version, payload).map_err(decode)?;
            self.billing_mode = serde_json::to_value(m.to)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
        }
        self.events += 1;
        Ok(())
    }

    /// The state after the events applied, with the plan in force at `at_micros` (microseconds
    /// since the epoch).
    pub fn state(&self, tenant_id: &str, at_micros: i64) -> TenantState {
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_micros) * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let t = &self.tenant;
        TenantState {
            tenant_id: tenant_id.to_owned(),
            at: format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second(),
                at.microsecond()
            ),
            events: self.events,
            name: t.name.as_ref().map(|n| n.as_str().to_owned()),
            plan: t.plan_at(at).as_str().to_owned(),
            members: t
                .members
                .iter()
                .map(|(id, m)| MemberState {
                    user_id: id.as_uuid().to_string(),
                    role: m.role.as_str().to_owned(),
                })
                .collect(),
            flags: t
                .flags
                .iter()
                .map(|(f, on)| (f.as_str().to_owned(), *on))
                .collect(),
            presets: self
                .presets
                .values()
                .filter_map(|p| {
                    let v = p.latest()?;
                    Some(PresetState {
                        preset_id: v.preset_id.to_string(),
                        name: v.name.clone(),
                        version: v.version,
                        deleted: p.deleted,
                    })
                })
                .collect(),
            billing_mode: self.billing_mode.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_folds_the_tenant_stream_and_ignores_other_streams_but_fails_closed_on_its_own() {
        let mut r = Replay::new();
        let signed_up = br#"{"name":"Acme","plan":"free","at":"2026-01-05T09:00:00Z"}"#;
        r.apply(0, "tenant-x", "tenant.signed_up", 1, signed_up)
            .unwrap();
        r.apply(1, "usage-queries-2026-01", "usage.recorded", 2, b"{}")
            .unwrap();
        r.apply(
            2,
            "tenant-x",
            "tenant.renamed",
            1,
            br#"{"from":"Acme","to":"Acme 2"}"#,
        )
        .unwrap();
        let s = r.state("x", 1_767_600_000_000_000);
        assert_eq!(s.name.as_deref(), Some("Acme 2"));
        assert_eq!(s.plan, "free");
        assert_eq!(s.events, 3);
        assert_eq!(s.at, "2026-01-05T08:00:00.000000Z");
        assert_eq!(
            r.apply(5, "tenant-x", "tenant.renamed", 1, b"{}"),
            Err(ReplayError::OutOfOrder {
                sequence: 5,
                expected: 3
            })
        );
        assert!(matches!(
            r.apply(3, "tenant-x", "tenant.exploded", 1, b"{}"),
            Err(ReplayError::Decode { .. })
        ));
    }
}
