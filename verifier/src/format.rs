//! The bundle format as the verifier reads it (docs/audit-bundle.md), written from the document and
//! not shared with the writer: every object refuses unknown and duplicate members, and the leaf
//! layout is encoded here again.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::encoding::{base64_hash, hex_hash, timestamp};
use crate::merkle::Hash;

pub const FORMAT: &str = "tenantry-audit-bundle";
pub const FORMAT_VERSION: u32 = 1;

pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SIG: &str = "manifest.json.sig";
pub const CHECKPOINT: &str = "checkpoint";
pub const EVENTS: &str = "events.jsonl";
pub const RANGE_PROOF: &str = "proofs/range.json";
pub const CONSISTENCY: &str = "proofs/consistency.json";
pub const POLICY: &str = "retention/policy.json";
pub const ERASURES: &str = "retention/erasures.jsonl";
pub const EXPORT_KEY: &str = "keys/export.pem";
pub const LOG_KEY: &str = "keys/log.pem";
pub const VERIFY: &str = "VERIFY.md";

/// Every file the manifest must list, exactly these.
pub const LISTED: [&str; 9] = [
    CHECKPOINT,
    EVENTS,
    RANGE_PROOF,
    CONSISTENCY,
    POLICY,
    ERASURES,
    EXPORT_KEY,
    LOG_KEY,
    VERIFY,
];

pub const POLICY_EVENT_TYPE: &str = "retention.policy_set";
pub const ERASURE_EVENT_TYPE: &str = "erasure.applied";
pub const SEALED_MEMBER: &str = "$sealed";
/// The reason of an erasure a subject asked for (the right to erasure): it may fall inside a
/// window, and must erase events that hold sealed personal data.
pub const SUBJECT_REQUEST: &str = "$subject-request";

/// The first members read, so that an unknown version is named as such.
#[derive(Deserialize)]
pub struct ManifestHead {
    pub format: String,
    pub format_version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub bundle_id: String,
    pub created_at: String,
    pub tenant: String,
    pub previous_bundle_id: Option<String>,
    pub range: ManifestRange,
    pub event_count: u64,
    pub tree: ManifestTree,
    pub keys: ManifestKeys,
    pub retention: RetentionSummary,
    pub files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRange {
    pub from: String,
    pub to: String,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTree {
    pub size: u64,
    pub root: String,
    pub checkpoint_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestKeys {
    pub export: ExportKey,
    pub log: LogKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportKey {
    pub file: String,
    pub public_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogKey {
    pub file: String,
    pub name: String,
    pub key_id: String,
    pub public_key: String,
}

#[derive(Deserialize, PartialEq, Eq, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionSummary {
    pub as_of: String,
    pub rules: u64,
    pub events_in_scope: u64,
    pub events_past_window: u64,
    pub erased_events: u64,
    pub erasures: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A line of `events.jsonl`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLine<'a> {
    pub sequence: u64,
    pub global_position: u64,
    pub occurred_at: &'a str,
    pub recorded_at: &'a str,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    pub schema_version: u16,
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    pub payload_sha256: &'a str,
    /// The stored payload as raw JSON (`"payload": null` is the stored text `null`).
    #[serde(borrow, default, deserialize_with = "present_raw")]
    pub payload: Option<&'a RawValue>,
    /// The stored payload as a JSON string, when it is not one line of JSON.
    #[serde(borrow, default)]
    pub payload_text: Option<Cow<'a, str>>,
}

impl EventLine<'_> {
    /// The payload's stored text; `Ok(None)` for a tombstone.
    pub fn payload(&self) -> Result<Option<&str>, String> {
        match (&self.payload, &self.payload_text) {
            (Some(_), Some(_)) => Err("both payload and payload_text".into()),
            (Some(r), None) => Ok(Some(r.get())),
            (None, Some(t)) => Ok(Some(t)),
            (None, None) => Ok(None),
        }
    }
}

fn present_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A leaf proven by an inclusion proof: the boundaries (no payload), the policy and the erasures.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenLeaf {
    pub sequence: u64,
    pub global_position: u64,
    pub occurred_at: String,
    pub recorded_at: String,
    pub event_type: String,
    pub schema_version: u16,
    pub stream: String,
    pub payload_sha256: String,
    #[serde(default, deserialize_with = "present_raw_owned")]
    pub payload: Option<Box<RawValue>>,
    #[serde(default)]
    pub payload_text: Option<String>,
    pub inclusion: Vec<String>,
}

impl ProvenLeaf {
    pub fn payload(&self) -> Result<Option<&str>, String> {
        match (&self.payload, &self.payload_text) {
            (Some(_), Some(_)) => Err("both payload and payload_text".into()),
            (Some(r), None) => Ok(Some(r.get())),
            (None, Some(t)) => Ok(Some(t)),
            (None, None) => Ok(None),
        }
    }
}

fn present_raw_owned<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeProof {
    pub tree_size: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub left: Vec<String>,
    pub consistency: Vec<String>,
    pub before: Option<ProvenLeaf>,
    pub after: Option<ProvenLeaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyFile {
    pub tree_size: u64,
    pub from: Vec<KnownProof>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownProof {
    pub size: u64,
    pub proof: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub as_of: String,
    pub policy: Option<ProvenLeaf>,
}

/// The payload of `retention.policy_set`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub event_types: Vec<String>,
    pub fields: Vec<String>,
    pub keep_days: u32,
}

/// The payload of `erasure.applied`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    pub rule: String,
    pub sequences: Vec<u64>,
}

/// A leaf's header, decoded from its JSON spelling.
pub struct Header<'a> {
    pub sequence: u64,
    pub global_position: u64,
    pub occurred_at: i64,
    pub recorded_at: i64,
    pub event_type: &'a str,
    pub schema_version: u16,
    pub stream: &'a str,
    pub payload_sha256: Hash,
}

impl<'a> Header<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        sequence: u64,
        global_position: u64,
        occurred_at: &str,
        recorded_at: &str,
        event_type: &'a str,
        schema_version: u16,
        stream: &'a str,
        payload_sha256: &str,
    ) -> Result<Self, String> {
        Ok(Header {
            sequence,
            global_position,
            occurred_at: timestamp(occurred_at)
                .ok_or_else(|| format!("bad occurred_at {occurred_at:?}"))?,
            recorded_at: timestamp(recorded_at)
                .ok_or_else(|| format!("bad recorded_at {recorded_at:?}"))?,
            event_type,
            schema_version,
            stream,
            payload_sha256: hex_hash(payload_sha256)
                .ok_or_else(|| format!("bad payload_sha256 {payload_sha256:?}"))?,
        })
    }

    pub fn of_line(l: &'a EventLine<'_>) -> Result<Self, String> {
        Header::parse(
            l.sequence,
            l.global_position,
            l.occurred_at,
            l.recorded_at,
            &l.event_type,
            l.schema_version,
            &l.stream,
            l.payload_sha256,
        )
    }

    pub fn of_proven(l: &'a ProvenLeaf) -> Result<Self, String> {
        Header::parse(
            l.sequence,
            l.global_position,
            &l.occurred_at,
            &l.recorded_at,
            &l.event_type,
            l.schema_version,
            &l.stream,
            &l.payload_sha256,
        )
    }

    /// The leaf hash of the version-1 layout: `SHA-256(0x00 || 0x01 || seq || pos || occurred ||
    /// recorded || len16 type || schema || len16 stream || payload hash)`.
    pub fn leaf_hash(&self) -> Result<Hash, String> {
        let ty =
            u16::try_from(self.event_type.len()).map_err(|_| "event type too long".to_string())?;
        let st = u16::try_from(self.stream.len()).map_err(|_| "stream too long".to_string())?;
        let mut h = Sha256::new();
        h.update([0x00, 0x01]);
        h.update(self.sequence.to_be_bytes());
        h.update(self.global_position.to_be_bytes());
        h.update(self.occurred_at.to_be_bytes());
        h.update(self.recorded_at.to_be_bytes());
        h.update(ty.to_be_bytes());
        h.update(self.event_type.as_bytes());
        h.update(self.schema_version.to_be_bytes());
        h.update(st.to_be_bytes());
        h.update(self.stream.as_bytes());
        h.update(self.payload_sha256);
        Ok(h.finalize().into())
    }
}

/// Decodes a list of base64 hashes.
pub fn hashes(list: &[String], what: &str) -> Result<Vec<Hash>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            base64_hash(s).ok_or_else(|| format!("{what}[{i}] is not a base64 32-byte hash"))
        })
        .collect()
}
