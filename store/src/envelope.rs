//! The stored event (envelope), the event a caller appends, and the append's expectations.

use domain::TenantId;
use serde::{Serialize, Serializer};
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// A JSON document kept as the exact bytes it was written with.
///
/// The bytes hashed for audit are the bytes stored, so the store never re-serializes a payload:
/// it validates once when the event is built and then moves the bytes around untouched.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Arc<str>);

#[derive(Debug, thiserror::Error)]
#[error("payload is not valid JSON: {0}")]
pub struct InvalidJson(#[from] serde_json::Error);

impl RawJson {
    /// Validate `text` as one JSON value and keep it byte for byte.
    pub fn parse(text: impl Into<String>) -> Result<Self, InvalidJson> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Self(text.into()))
    }

    /// Serialize a value compactly.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Self {
        let text = serde_json::to_string(value).expect("serializing to a string cannot fail");
        Self(text.into())
    }

    /// Bytes read back from the store: they were validated when they were appended.
    pub(crate) fn from_stored(text: String) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).expect("stored payloads are valid JSON")
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: Box<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(self.0.to_string())
                .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// The version a stream must be at for an append to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have exactly this version (1-based).
    Exact(u64),
}

impl Expected {
    /// Whether a stream currently at `current` (0 = no stream) satisfies this expectation.
    pub fn admits(self, current: u64) -> bool {
        match self {
            Expected::Any => true,
            Expected::NoStream => current == 0,
            Expected::Exists => current > 0,
            Expected::Exact(v) => current == v,
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Any => f.write_str("any"),
            Expected::NoStream => f.write_str("no stream"),
            Expected::Exists => f.write_str("an existing stream"),
            Expected::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An event to append. Its id makes the append idempotent: re-appending the same id with the
/// same content returns the original positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub payload: RawJson,
    /// Metadata of this event when it differs from the append's (commands decided together
    /// and appended at once keep each their own actor and correlation).
    pub metadata: Option<Metadata>,
    /// The business time of the fact (the decision time, from the caller's clock); `None`
    /// means "now", the store's `recorded_at`.
    pub occurred_at: Option<OffsetDateTime>,
}

impl NewEvent {
    /// A new event with a fresh (time-ordered) id and schema version 1.
    pub fn new(event_type: impl Into<String>, payload: RawJson) -> Self {
        Self {
            event_id: new_event_id(),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: None,
            occurred_at: None,
        }
    }

    /// The business time of the fact (kept to the microsecond).
    pub fn occurred_at(mut self, at: OffsetDateTime) -> Self {
        self.occurred_at = Some(at);
        self
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    pub fn with_schema_version(mut self, v: u16) -> Self {
        self.schema_version = v;
        self
    }
}

/// A fresh, time-ordered (version 7) UUID for an event.
///
/// Its 74 random bits come from a per-thread xorshift generator seeded from the operating
/// system's randomness, not from a system call per id: ids must be unique, not secret, and the
/// append path makes millions of them. Time-ordered ids also keep the store's id index appending
/// at its right edge.
pub fn new_event_id() -> Uuid {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
            seed | 1
        });
    }
    let next = || {
        STATE.with(|s| {
            // xorshift64*
            let mut x = s.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            s.set(x);
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
    };
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next().to_le_bytes());
    random[8..].copy_from_slice(&next().to_le_bytes()[..2]);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// Who and what caused an append; copied into every envelope it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// A user id, an operator id, or `system`.
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub trace_id: Option<String>,
    /// When set (a request under an `Idempotency-Key`), the command executor derives its events'
    /// ids from this seed, the stream, the event type and the event's index in the command,
    /// instead of drawing fresh ones: a retry of the same request then writes the same ids, and
    /// the store's idempotent append answers whether the first attempt was written (a replay),
    /// or refuses a different decision under the same ids — never a second copy.
    pub event_id_seed: Option<Uuid>,
    /// Set on a retry of a request whose events were already written (its idempotency record was
    /// abandoned or taken over, but its seed is marked applied, docs/adr/035): every append made
    /// under this metadata must be a replay of stored events (the same ids and content), or it is
    /// refused with [`crate::StoreError::NotAReplay`] and writes nothing. The retry then rebuilds
    /// the first answer when it decides what the first attempt decided, and never writes a
    /// second, different decision. Not stored.
    pub replay_only: bool,
}

impl Metadata {
    pub fn system() -> Self {
        Self::actor("system")
    }

    pub fn actor(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            correlation_id: new_event_id(),
            causation_id: None,
            trace_id: None,
            event_id_seed: None,
            replay_only: false,
        }
    }
}

/// One append call: atomic, all events or none.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub tenant_id: TenantId,
    pub stream_id: String,
    pub expected: Expected,
    pub events: Vec<NewEvent>,
    pub metadata: Metadata,
}

impl AppendRequest {
    /// Whether any event of it (or the append itself) is under `Metadata::replay_only`: then the
    /// whole append must be a replay. Backends look its event ids up before they plan it.
    pub fn replay_only(&self) -> bool {
        self.metadata.replay_only
            || self
                .events
                .iter()
                .any(|e| e.metadata.as_ref().is_some_and(|m| m.replay_only))
    }
}

/// What an append wrote (or, for an idempotent re-append, what the original wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The global position of each event, in order.
    pub positions: Vec<u64>,
    /// The stream's version after the append's last event.
    pub stream_version: u64,
    /// True when every event was already stored and nothing was written.
    pub replayed: bool,
}

impl Appended {
    pub fn last_position(&self) -> u64 {
        *self
            .positions
            .last()
            .expect("an append has at least one event")
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Envelope {
    pub global_position: u64,
    pub tenant_id: TenantId,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    /// When the fact happened in business time (the decision's clock). Periods, days and ISO
    /// weeks are computed from it. Events written before it existed read it as `recorded_at`.
    #[serde(serialize_with = "rfc3339_micros")]
    pub occurred_at: OffsetDateTime,
    /// When the store committed the event.
    #[serde(serialize_with = "rfc3339_micros")]
    pub recorded_at: OffsetDateTime,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub payload: RawJson,
}

/// RFC 3339 in UTC with exactly microsecond precision, e.g. `2026-02-16T09:30:00.000001Z`.
pub fn format_rfc3339_micros(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn rfc3339_micros<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339_micros(*t))
}

/// Microseconds since the Unix epoch, the stored form of `recorded_at`.
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .expect("stored timestamps are in range")
}

/// `t` truncated to the microsecond precision the store keeps.
pub(crate) fn truncate_micros(t: OffsetDateTime) -> OffsetDateTime {
    from_micros(to_micros(t))
}

/// Now, truncated to the microsecond precision the store keeps.
pub(crate) fn now_micros() -> OffsetDateTime {
    from_micros(to_micros(OffsetDateTime::now_utc()))
}
