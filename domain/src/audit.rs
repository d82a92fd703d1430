//! The `AuditLog` aggregate: what the audit log records about itself. In the platform tenant's
//! stream `audit-keys` it is the keyring — which log key (signs checkpoints) and which export key
//! (signs bundle manifests) are in force, and every earlier one, by generation; in a tenant's
//! stream `audit-bundles` it is the bundles that tenant exported; in the platform tenant's stream
//! `audit-checkpoints-{tenant}` it is that tenant's recorded signed checkpoints (ADR 023).
//!
//! Key material never enters an event: only public keys and key ids. The private halves are
//! platform blobs named by kind and generation.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The platform tenant's stream of the keyring.
pub const KEYS_STREAM: &str = "audit-keys";
/// A tenant's stream of its exported bundles.
pub const BUNDLES_STREAM: &str = "audit-bundles";

/// A tenant's stream of its retention policy.
pub const RETENTION_STREAM: &str = "retention";

/// The platform tenant's stream of one tenant's recorded checkpoints. They are kept outside the
/// tenant's own log so that recording a checkpoint does not grow the tree it signs.
pub fn checkpoints_stream(tenant: crate::TenantId) -> String {
    format!("audit-checkpoints-{}", tenant.as_uuid())
}

/// Which key: the log key signs checkpoints, the export key signs bundle manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Log,
    Export,
}

impl KeyKind {
    pub const ALL: [KeyKind; 2] = [KeyKind::Log, KeyKind::Export];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Log => "log",
            KeyKind::Export => "export",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "log" => Some(KeyKind::Log),
            "export" => Some(KeyKind::Export),
            _ => None,
        }
    }
}

/// A key put in force: the first of its kind, or a rotation (a higher generation). The earlier
/// keys stay in the keyring: what they signed still verifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyActivated {
    pub kind: KeyKind,
    /// 1 for the first key of its kind, then one more per rotation.
    pub generation: u32,
    /// The signer's name (the log key's C2SP name; the export key is named too, for display).
    pub name: String,
    /// 8 hex digits: the C2SP signed-note key id for the log key, the first 4 bytes of the
    /// public key's SHA-256 for the export key.
    pub key_id: String,
    /// The 32-byte Ed25519 public key, base64.
    pub public_key: String,
}

/// A bundle a tenant exported: what a later bundle names as its previous one and proves
/// consistency from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleExported {
    pub bundle_id: String,
    /// The range `[from, to)` of `recorded_at`, RFC 3339.
    pub from: String,
    pub to: String,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub tree_size: u64,
    /// The checkpoint's root, base64.
    pub root: String,
    pub manifest_sha256: String,
}

/// A tenant's tree signed by the log key and recorded (every N events or T seconds of growth).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSigned {
    pub tenant_id: crate::TenantId,
    pub size: u64,
    /// The root, base64.
    pub root: String,
    /// The log key's id, 8 hex digits.
    pub key_id: String,
    /// The whole C2SP signed note.
    pub note: String,
}

/// One retention rule: the fields (JSON pointers) of some event types' payloads, kept
/// `keep_days` after the event's `occurred_at` (the shape ADR 020's bundle format proves with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    pub name: String,
    pub event_types: Vec<String>,
    pub fields: Vec<String>,
    pub keep_days: u32,
}

/// A tenant's stream of its applied erasures (`erasure.applied`).
pub const ERASURES_STREAM: &str = "erasures";

/// An applied erasure (ADR 020, ADR 032): the rule that required it (a policy rule's name, or
/// [`crate::personal::SUBJECT_REQUEST`] for a subject's own request) and the tenant sequences of
/// the events whose personal data it erased. Recorded before the keys are destroyed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureApplied {
    pub rule: String,
    pub sequences: Vec<u64>,
}

/// The tenant's retention policy, whole (a new one replaces the last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicySet {
    pub rules: Vec<RetentionRule>,
}

impl RetentionPolicySet {
    /// The longest window a rule may ask for: 100 years.
    pub const MAX_KEEP_DAYS: u32 = 36_500;

    /// Every rule's problems, `(field, reason)`; empty when the policy is valid.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if r.name.trim().is_empty() || r.name.chars().count() > 100 {
                out.push((at("name"), "must be 1 to 100 characters".into()));
            } else if r.name.starts_with('$') {
                out.push((at("name"), "must not start with `$` (reserved)".into()));
            } else if !names.insert(r.name.as_str()) {
                out.push((at("name"), "is the name of an earlier rule".into()));
            }
            if r.event_types.is_empty()
                || r.event_types
                    .iter()
                    .any(|t| t.is_empty() || t.chars().any(char::is_whitespace))
            {
                out.push((at("event_types"), "must list event types".into()));
            }
            if r.fields.is_empty() || r.fields.iter().any(|f| !f.starts_with('/')) {
                out.push((at("fields"), "must list JSON pointers (\"/email\")".into()));
            }
            if r.keep_days > Self::MAX_KEEP_DAYS {
                out.push((
                    at("keep_days"),
                    format!("must be at most {}", Self::MAX_KEEP_DAYS),
                ));
            }
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditCommand {
    ActivateKey(KeyActivated),
    RecordBundle(BundleExported),
    RecordCheckpoint(CheckpointSigned),
    SetRetention(RetentionPolicySet),
    RecordErasure(ErasureApplied),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditEvent {
    KeyActivated(KeyActivated),
    BundleExported(BundleExported),
    CheckpointSigned(CheckpointSigned),
    RetentionPolicySet(RetentionPolicySet),
    ErasureApplied(ErasureApplied),
}

impl AuditEvent {
    /// Every event type this aggregate writes, with the schema version it writes.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("audit.key_activated", 1),
        ("audit.bundle_exported", 1),
        ("audit.checkpoint_signed", 1),
        ("retention.policy_set", 1),
        ("erasure.applied", 1),
    ];
}

impl DomainEvent for AuditEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AuditEvent::KeyActivated(_) => "audit.key_activated",
            AuditEvent::BundleExported(_) => "audit.bundle_exported",
            AuditEvent::CheckpointSigned(_) => "audit.checkpoint_signed",
            AuditEvent::RetentionPolicySet(_) => "retention.policy_set",
            AuditEvent::ErasureApplied(_) => "erasure.applied",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            AuditEvent::KeyActivated(e) => serde_json::to_value(e),
            AuditEvent::BundleExported(e) => serde_json::to_value(e),
            AuditEvent::CheckpointSigned(e) => serde_json::to_value(e),
            AuditEvent::RetentionPolicySet(e) => serde_json::to_value(e),
            AuditEvent::ErasureApplied(e) => serde_json::to_value(e),
        }
        .expect("audit events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("audit.key_activated", 1) => Ok(AuditEvent::KeyActivated(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("audit.bundle_exported", 1) => Ok(AuditEvent::BundleExported(
                EventDecodeError::parse(event_type, payload)?,
            )),
            ("audit.checkpoint_signed", 1) => Ok(AuditEvent::CheckpointSigned(
                EventDecodeError::parse(event_type, payload)?,
            )),
            ("retention.policy_set", 1) => Ok(AuditEvent::RetentionPolicySet(
                EventDecodeError::parse(event_type, payload)?,
            )),
            ("erasure.applied", 1) => Ok(AuditEvent::ErasureApplied(EventDecodeError::parse(
                event_type, payload,
            )?)),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// Another activation of that generation won (a concurrent rotation or a second instance
    /// starting at the same time).
    #[error("{kind:?} key generation {generation} is not the next one (the current is {current})")]
    NotNextGeneration {
        kind: KeyKind,
        generation: u32,
        current: u32,
    },
    #[error("bundle {0} is already recorded")]
    BundleRecorded(String),
    /// A checkpoint no larger than the last recorded one (another instance recorded it first).
    #[error("a checkpoint of size {size} is not newer than the recorded size {recorded}")]
    CheckpointNotNewer { size: u64, recorded: u64 },
    /// A retention policy with invalid rules, `(field, reason)` each.
    #[error("invalid retention policy: {0:?}")]
    InvalidPolicy(Vec<(String, String)>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// Every key ever activated, in order.
    pub keys: Vec<KeyActivated>,
    /// Every bundle exported, in order.
    pub bundles: Vec<BundleExported>,
    /// The sizes of the recorded checkpoints, the latest last (at most [`KEPT_CHECKPOINTS`]).
    #[serde(default)]
    pub checkpoint_sizes: Vec<u64>,
    /// The retention policy in force.
    #[serde(default)]
    pub policy: Option<RetentionPolicySet>,
    /// The tenant sequences an `erasure.applied` of this stream erased.
    #[serde(default)]
    pub erased: std::collections::BTreeSet<u64>,
}

/// How many recorded checkpoint sizes the state keeps (what a bundle proves consistency from).
pub const KEPT_CHECKPOINTS: usize = 16;

impl AuditLog {
    /// The key of `kind` in force: the highest generation.
    pub fn current(&self, kind: KeyKind) -> Option<&KeyActivated> {
        self.keys
            .iter()
            .filter(|k| k.kind == kind)
            .max_by_key(|k| k.generation)
    }

    pub fn generation(&self, kind: KeyKind) -> u32 {
        self.current(kind).map_or(0, |k| k.generation)
    }
}

impl Aggregate for AuditLog {
    type Command = AuditCommand;
    type Event = AuditEvent;
    type Error = AuditError;

    fn decide(
        &self,
        command: &AuditCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        match command {
            AuditCommand::ActivateKey(k) => {
                let current = self.generation(k.kind);
                if k.generation != current + 1 {
                    return Err(AuditError::NotNextGeneration {
                        kind: k.kind,
                        generation: k.generation,
                        current,
                    });
                }
                Ok(vec![AuditEvent::KeyActivated(k.clone())])
            }
            AuditCommand::RecordBundle(b) => {
                if self.bundles.iter().any(|x| x.bundle_id == b.bundle_id) {
                    return Err(AuditError::BundleRecorded(b.bundle_id.clone()));
                }
                Ok(vec![AuditEvent::BundleExported(b.clone())])
            }
            AuditCommand::RecordCheckpoint(c) => {
                let recorded = self.checkpoint_sizes.last().copied().unwrap_or(0);
                if c.size <= recorded {
                    return Err(AuditError::CheckpointNotNewer {
                        size: c.size,
                        recorded,
                    });
                }
                Ok(vec![AuditEvent::CheckpointSigned(c.clone())])
            }
            AuditCommand::SetRetention(p) => {
                let problems = p.problems();
                if !problems.is_empty() {
                    return Err(AuditError::InvalidPolicy(problems));
                }
                if self.policy.as_ref() == Some(p) {
                    return Ok(Vec::new());
                }
                Ok(vec![AuditEvent::RetentionPolicySet(p.clone())])
            }
            AuditCommand::RecordErasure(e) => {
                // Sequences erased before are not erased twice; nothing new writes nothing.
                let mut sequences: Vec<u64> = e
                    .sequences
                    .iter()
                    .copied()
                    .filter(|s| !self.erased.contains(s))
                    .collect();
                sequences.sort_unstable();
                sequences.dedup();
                if sequences.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![AuditEvent::ErasureApplied(ErasureApplied {
                    rule: e.rule.clone(),
                    sequences,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &AuditEvent) {
        match event {
            AuditEvent::KeyActivated(k) => self.keys.push(k.clone()),
            AuditEvent::BundleExported(b) => self.bundles.push(b.clone()),
            AuditEvent::CheckpointSigned(c) => {
                self.checkpoint_sizes.push(c.size);
                if self.checkpoint_sizes.len() > KEPT_CHECKPOINTS {
                    self.checkpoint_sizes.remove(0);
                }
            }
            AuditEvent::RetentionPolicySet(p) => self.policy = Some(p.clone()),
            AuditEvent::ErasureApplied(e) => self.erased.extend(e.sequences.iter().copied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;

    fn key(kind: KeyKind, generation: u32) -> KeyActivated {
        KeyActivated {
            kind,
            generation,
            name: "tenantry.dev/audit".into(),
            key_id: format!("{generation:08x}"),
            public_key: "AAAA".into(),
        }
    }

    fn bundle(id: &str) -> BundleExported {
        BundleExported {
            bundle_id: id.into(),
            from: "2026-01-01T00:00:00.000000Z".into(),
            to: "2026-02-01T00:00:00.000000Z".into(),
            first_sequence: 0,
            last_sequence: 9,
            tree_size: 12,
            root: "AAAA".into(),
            manifest_sha256: "00".repeat(32),
        }
    }

    #[test]
    fn keys_rotate_one_generation_at_a_time_and_old_ones_stay() {
        given::<AuditLog>([])
            .when(AuditCommand::ActivateKey(key(KeyKind::Log, 1)))
            .then([AuditEvent::KeyActivated(key(KeyKind::Log, 1))]);
        given::<AuditLog>([AuditEvent::KeyActivated(key(KeyKind::Log, 1))])
            .when(AuditCommand::ActivateKey(key(KeyKind::Log, 1)))
            .then_err(AuditError::NotNextGeneration {
                kind: KeyKind::Log,
                generation: 1,
                current: 1,
            });
        given::<AuditLog>([AuditEvent::KeyActivated(key(KeyKind::Log, 1))])
            .when(AuditCommand::ActivateKey(key(KeyKind::Export, 1)))
            .then([AuditEvent::KeyActivated(key(KeyKind::Export, 1))]);
        let mut state = AuditLog::default();
        state.evolve(&AuditEvent::KeyActivated(key(KeyKind::Log, 1)));
        state.evolve(&AuditEvent::KeyActivated(key(KeyKind::Log, 2)));
        assert_eq!(state.current(KeyKind::Log).unwrap().generation, 2);
        assert_eq!(state.keys.len(), 2, "the rotated key stays in the keyring");
    }

    fn checkpoint(size: u64) -> CheckpointSigned {
        CheckpointSigned {
            tenant_id: crate::TenantId::from_uuid(uuid::Uuid::from_u128(9)),
            size,
            root: "AAAA".into(),
            key_id: "0badcafe".into(),
            note: "o\n7\nAAAA\n\n\u{2014} o AAAA\n".into(),
        }
    }

    fn policy(keep_days: u32) -> RetentionPolicySet {
        RetentionPolicySet {
            rules: vec![RetentionRule {
                name: "members".into(),
                event_types: vec!["member.added".into()],
                fields: vec!["/email".into(), "/name".into()],
                keep_days,
            }],
        }
    }

    #[test]
    fn a_retention_policy_is_checked_and_a_repeat_writes_nothing() {
        given::<AuditLog>([])
            .when(AuditCommand::SetRetention(policy(30)))
            .then([AuditEvent::RetentionPolicySet(policy(30))]);
        given::<AuditLog>([AuditEvent::RetentionPolicySet(policy(30))])
            .when(AuditCommand::SetRetention(policy(30)))
            .then([]);
        let mut bad = policy(40_000);
        bad.rules.push(bad.rules[0].clone());
        bad.rules[1].fields = vec!["email".into()];
        given::<AuditLog>([])
            .when(AuditCommand::SetRetention(bad))
            .then_err(AuditError::InvalidPolicy(vec![
                ("rules[0].keep_days".into(), "must be at most 36500".into()),
                (
                    "rules[1].name".into(),
                    "is the name of an earlier rule".into(),
                ),
                (
                    "rules[1].fields".into(),
                    "must list JSON pointers (\"/email\")".into(),
                ),
                ("rules[1].keep_days".into(), "must be at most 36500".into()),
            ]));
    }

    #[test]
    fn recorded_checkpoints_only_grow() {
        given::<AuditLog>([AuditEvent::CheckpointSigned(checkpoint(7))])
            .when(AuditCommand::RecordCheckpoint(checkpoint(7)))
            .then_err(AuditError::CheckpointNotNewer {
                size: 7,
                recorded: 7,
            });
        given::<AuditLog>([AuditEvent::CheckpointSigned(checkpoint(7))])
            .when(AuditCommand::RecordCheckpoint(checkpoint(8)))
            .then([AuditEvent::CheckpointSigned(checkpoint(8))]);
    }

    #[test]
    fn a_bundle_is_recorded_once() {
        given::<AuditLog>([AuditEvent::BundleExported(bundle("b-1"))])
            .when(AuditCommand::RecordBundle(bundle("b-1")))
            .then_err(AuditError::BundleRecorded("b-1".into()));
    }

    #[test]
    fn an_erasure_records_only_sequences_not_erased_before() {
        let er = |s: Vec<u64>| ErasureApplied {
            rule: "members".into(),
            sequences: s,
        };
        given::<AuditLog>([])
            .when(AuditCommand::RecordErasure(er(vec![6, 1, 6])))
            .then([AuditEvent::ErasureApplied(er(vec![1, 6]))]);
        given::<AuditLog>([AuditEvent::ErasureApplied(er(vec![1, 6]))])
            .when(AuditCommand::RecordErasure(er(vec![1, 6, 9])))
            .then([AuditEvent::ErasureApplied(er(vec![9]))]);
        given::<AuditLog>([AuditEvent::ErasureApplied(er(vec![1, 6]))])
            .when(AuditCommand::RecordErasure(er(vec![6])))
            .then([]);
    }

    #[test]
    fn a_policy_rule_cannot_take_a_reserved_name() {
        let mut p = policy(30);
        p.rules[0].name = crate::personal::SUBJECT_REQUEST.into();
        assert_eq!(p.problems()[0].0, "rules[0].name");
    }

    #[test]
    fn every_audit_event_type_round_trips_and_is_catalogued() {
        let events = [
            AuditEvent::KeyActivated(key(KeyKind::Export, 3)),
            AuditEvent::BundleExported(bundle("b-2")),
            AuditEvent::CheckpointSigned(checkpoint(7)),
            AuditEvent::RetentionPolicySet(policy(30)),
            AuditEvent::ErasureApplied(ErasureApplied {
                rule: "members".into(),
                sequences: vec![1, 6],
            }),
        ];
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        assert_eq!(kinds, AuditEvent::ALL_EVENT_TYPES);
        for e in events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back = AuditEvent::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(back, e);
        }
    }
}
